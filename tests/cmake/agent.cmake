outrider_test(test_agent_commands SOURCES unit/test_agent_commands.cpp LIBS outrider_agent LABELS unit hub)
outrider_test(test_agent_session SOURCES unit/test_agent_session.cpp LIBS outrider_agent LABELS unit hub)
outrider_test(test_agent_workloads SOURCES unit/test_agent_workloads.cpp LIBS outrider_agent LABELS unit hub)
