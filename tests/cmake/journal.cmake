outrider_test(test_agent_journal SOURCES unit/test_journal.cpp LIBS outrider_agent LABELS unit hub)
