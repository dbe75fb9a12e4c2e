#pragma once
// `outriderctl hook run` output: the per-hook table and outputs, or JSON. Pure functions.
#include <string>

#include "outrider/v1/hub.pb.h"

namespace outrider::ctl {

/// HOOK, STATUS, DURATION; the skipped entries and why; each hook's output under "--- NAME"; the summary.
std::string formatHookRun(const v1::HookRunResult& r);
/// {"event","aborted","summary","hooks":[{name,status,exit_code,signal,timed_out,duration_ms,truncated,output}],
///  "skipped":[{name,reason}]}
std::string hookRunJson(const v1::HookRunResult& r);

}  // namespace outrider::ctl
