# Firmware hooks: the hook runner, and the boot-slot backends against the real grub-editenv and
# fw_printenv/fw_setenv on temporary environment files.
outrider_test(test_hooks_runner SOURCES unit/test_hooks_runner.cpp LIBS outrider_hooks LABELS unit hooks TIMEOUT 120)
outrider_test(test_boot_slots SOURCES integration/test_boot_slots.cpp LIBS outrider_hooks LABELS integration hooks TIMEOUT 120)
# `outriderctl hook run` through a real broker and the real agent.
outrider_test(test_hooks_hub SOURCES integration/test_hooks_hub.cpp LIBS outrider_proto
  LABELS integration hooks TIMEOUT 180)
add_dependencies(test_hooks_hub outrider-agent outriderctl)
# The agent's side: the hook command's checks, [hooks] config, results into the reply and events.
outrider_test(test_agent_hooks SOURCES unit/test_agent_hooks.cpp LIBS outrider_agent LABELS unit hooks)
