-- wrk script for scripts/loadtest-refresh.sh: each connection waits DELAY_MS
-- milliseconds before each request, so that a plain endpoint is measured at about the
-- refreshes' rate instead of at saturation.
local ms = tonumber(os.getenv("DELAY_MS") or "0")

function delay()
  return ms
end
