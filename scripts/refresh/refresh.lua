-- wrk script for scripts/loadtest-refresh.sh: every request refreshes one user's
-- current refresh token and puts the new one back, so each of the users keeps one
-- working chain (a pool of current tokens, far larger than the connections, so a
-- connection never waits for a chain). Any answer but 200 is counted and ends the chain.
local pool, client = {}, os.getenv("CLIENT_ID")
local path = os.getenv("TOKEN_PATH")
local errors = 0

function init(args)
  for line in io.lines(args[1]) do pool[#pool + 1] = line end
end

local function escape(s)
  return (s:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", string.byte(c)) end))
end

function request()
  local token = table.remove(pool)
  return wrk.format("POST", path, { ["Content-Type"] = "application/x-www-form-urlencoded" },
    "grant_type=refresh_token&client_id=" .. escape(client) .. "&refresh_token=" .. escape(token))
end

function response(status, headers, body)
  local token = status == 200 and body:match('"refresh_token"%s*:%s*"([^"]+)"')
  if token then
    table.insert(pool, 1, token)
  else
    errors = errors + 1
    if errors <= 3 then io.stderr:write("refresh answered " .. status .. ": " .. body .. "\n") end
  end
end

function done(summary, latency, requests)
  io.write(string.format("chains_broken %d\n", errors))
end
