"""N concurrent refreshes of one refresh token (scripts/loadtest-refresh.sh).

Prints what happened: how many answers were 200, how many distinct pairs they carried,
and whether the family is still alive (the pair's refresh token refreshes once more).
The token service's promise: exactly one rotation, every answer within the grace the
same pair, the family alive.
"""
import json, sys, threading, urllib.parse, urllib.request

url, client, token, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

def refresh(refresh_token):
    body = urllib.parse.urlencode({"grant_type": "refresh_token", "client_id": client,
                                   "refresh_token": refresh_token}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)

answers, barrier = [None] * n, threading.Barrier(n)
def one(i):
    barrier.wait()
    answers[i] = refresh(token)
threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
for t in threads: t.start()
for t in threads: t.join()

ok = [a for s, a in answers if s == 200]
# The same pair: the same refresh token and the same access token claims (an ES256
# signature differs each time it is made; the claims, `jti` included, must not).
pairs = {(a["refresh_token"], a["access_token"].split(".")[1]) for a in ok}
errors = sorted({a.get("error", "?") for s, a in answers if s != 200})
alive = False
if len(pairs) == 1:
    status, _ = refresh(next(iter(pairs))[0])
    alive = status == 200
print(f"{n} concurrent: {len(ok)} answered 200, {len(pairs)} distinct pair(s), "
      f"errors {errors or 'none'}, family alive afterwards: {'yes' if alive else 'no'}")
sys.exit(0 if len(ok) == n and len(pairs) == 1 and alive else 1)
