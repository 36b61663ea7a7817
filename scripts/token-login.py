"""USERS token exchanges on one TokenClient (dev mode's client secret): prints each
login's refresh token, one per line. Used by loadtest-refresh.sh and profile-refresh.sh.

    python3 scripts/token-login.py TOKEN_URL CLIENT SECRET USERS
"""
import concurrent.futures, json, sys, urllib.parse, urllib.request

url, client, secret, users = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])


def exchange(i):
    body = urllib.parse.urlencode({
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "client_id": client, "client_secret": secret,
        "subject_token": f"user-{i:06}",
        "subject_token_type": "urn:authplane:params:oauth:token-type:subject"}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/x-www-form-urlencoded"})
    # Under callgrind (profile-refresh.sh) a login takes far longer than in a load test.
    with urllib.request.urlopen(request, timeout=120) as answer:
        return json.load(answer)["refresh_token"]


with concurrent.futures.ThreadPoolExecutor(8) as pool:
    for token in pool.map(exchange, range(users)):
        print(token)
