"""Prints one oha JSON run as a line: rps, successes, p50 and proxy CPU per request
(from the /proc/PID/stat ticks before and after). Used by bench/translation.sh."""

import json, sys
d = json.loads(sys.argv[1])
n = sum(int(v) for v in d["statusCodeDistribution"].values())
ok = int(d["statusCodeDistribution"].get("200", 0))
ticks = int(sys.argv[3]) - int(sys.argv[2])
print(f'{sys.argv[4]:24} rps {d["summary"]["requestsPerSec"]:8.0f}  ok {ok}/{n}  p50 {d["latencyPercentiles"]["p50"]*1000:.2f} ms  cpu/req {ticks*10000/n:.1f} us')
