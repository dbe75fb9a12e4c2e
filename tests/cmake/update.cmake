# Updates with rollback (docs/updates.md). Unit: the resumable transfer, the state files, the health
# verdict and the agent's update steps against fakes.
outrider_test(test_update SOURCES unit/test_update.cpp LIBS outrider_agent LABELS unit hooks)
