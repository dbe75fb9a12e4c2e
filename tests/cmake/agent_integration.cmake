outrider_test(test_agent_hub SOURCES integration/test_agent_hub.cpp LIBS outrider_agent outrider_proto
  LABELS integration hub TIMEOUT 600)
# The binaries it runs must be built first.
add_dependencies(test_agent_hub outrider-agent outrider-vmm outrider-netd outriderctl)
