"""The one table of bad parameter values: for each, what the operator wrote and what the start's
error says. Every server runs every row (tests/test_end_to_end.py, BadParameters); the Rust unit
tests check the same parser without a server.

A row: (parameter, value as written in the config, the message's regex, other modparams the
case needs). Secrets used here must never appear in a log: SECRETS.
"""

KEY = "k-operator-S3CRET-0123456789"
REDIS_PASSWORD = "hunter2-pw"
SECRETS = (KEY, REDIS_PASSWORD)

ROWS = [
    ("interval", '"abc"', r"parameter 'interval': 'abc' is not a number of seconds \(e\.g\. 300, 5m, 7d\)", []),
    ("interval", "0", r"parameter 'interval': 0 is too small: at least 1 second", []),
    ("interval", '"-5"', r"parameter 'interval': '-5' is not a number of seconds", []),
    ("interval", '"8d"', r"parameter 'interval': 691200 is too large", []),
    ("url", '"ftp://example.com"', r"parameter 'url': 'ftp://example\.com' must start with https:// or http://", []),
    ("url", '"https:///api"', r"parameter 'url': 'https:///api' is not a base URL like https://apiban\.org", []),
    ("url", '"http://127.0.0.1:99999"', r"parameter 'url': .* has a bad port '99999'", []),
    ("url", '"https://user@apiban.org"', r"parameter 'url': .* is not a base URL", []),
    ("allow", '"10.0.0.0/33"', r"parameter 'allow': '10\.0\.0\.0/33' is not an address or CIDR range", []),
    ("allow", '"example.com"', r"parameter 'allow': 'example\.com' is not an address or CIDR range", []),
    ("allow", '"2001:db8::/129"', r"parameter 'allow': '2001:db8::/129' is not an address or CIDR range", []),
    ("max_entries", "0", r"parameter 'max_entries': must be at least 1", []),
    ("huge_pages", '"yes"', r"parameter 'huge_pages': 'yes' is not 0 \(off\) or 1 \(on\)", []),
    ("max_entries", '"lots"', r"parameter 'max_entries': 'lots' is not a number of entries", []),
    ("max_entries", '"1000000000000"', r"parameter 'max_entries': 1000000000000 is beyond the limit of 100000000", []),
    ("api_version", "3", r"parameter 'api_version': '3' is not a supported API version \(1 or 2\)", []),
    ("api_version", '"v2"', r"parameter 'api_version': 'v2' is not a supported API version", []),
    ("set", '"voip"', r"parameter 'set': 'voip' is not an APIBAN set \(sip, http or all\)", []),
    ("rate_limit", '"eleven"', r"parameter 'rate_limit': 'eleven' is not REQUESTS/SECONDS like 11/120", []),
    ("rate_limit", '"0/120"', r"parameter 'rate_limit': '0/120' is not REQUESTS/SECONDS", []),
    ("rate_limit", '"11/0"', r"parameter 'rate_limit': '11/0' is not REQUESTS/SECONDS", []),
    ("ttl", '"forever"', r"parameter 'ttl': 'forever' is not a number of seconds", []),
    ("ttl", '"30"', r"parameter 'ttl': 30 is too small: at least 60 second", []),
    ("full_resync", '"soon"', r"parameter 'full_resync': 'soon' is not a number of seconds", []),
    ("full_resync", '"10s"', r"parameter 'full_resync': 10 is too small: at least 60 second", []),
    ("timeout", "0", r"parameter 'timeout': 0 is too small: at least 1 second", []),
    ("timeout", '"-1"', r"parameter 'timeout': '-1' is not a number of seconds", []),
    ("timeout", '"10m"', r"parameter 'timeout': 600 is too large: at most 300 seconds", []),
    ("snapshot_file", '""', r"parameter 'snapshot_file': empty path", []),
    ("apikey", '"two words"', r"parameter 'apikey': empty or contains blanks or control characters", []),
    ("apikey", f'"{KEY}x"', r"parameter 'apikey': set twice", []),
    ("proxy", '"socks5://127.0.0.1:1080"', r"parameter 'proxy': .* must start with http://", []),
    # Fleet mode.
    ("redis_url", '"http://127.0.0.1:6379"', r"parameter 'redis_url': 'http://127\.0\.0\.1:6379': unknown scheme 'http'", []),
    ("redis_url", f'"redis://:{REDIS_PASSWORD}@127.0.0.1:0"', r"parameter 'redis_url': '127\.0\.0\.1:0' has a bad port '0'", []),
    ("redis_url", f'"redis+sentinel://:{REDIS_PASSWORD}@127.0.0.1"',
     r"parameter 'redis_url': 'redis\+sentinel://\*\*\*@127\.0\.0\.1' names no master", []),
    # An unencoded '/' in the password is still the password, never a database or a host.
    ("redis_url", f'"redis://u:{REDIS_PASSWORD}/x@127.0.0.1:0"', r"parameter 'redis_url': '127\.0\.0\.1:0' has a bad port", []),
    ("redis_prefix", '"two words"', r"parameter 'redis_prefix': 'two words' must be 1 to 64 printable characters", []),
    ("node_id", '""', r"parameter 'node_id': '' must be 1 to 64 printable characters", []),
    ("leader_ttl", "1", r"parameter 'leader_ttl': 1 is too small: at least 2 second", []),
    ("fleet_fallback", '"soon"', r"parameter 'fleet_fallback': 'soon' is not a number of seconds", []),
    # Local bans.
    ("max_bans", "0", r"parameter 'max_bans': 0 is not between 1 and 1000000", []),
    ("max_bans", '"many"', r"parameter 'max_bans': 'many' is not a number of bans", []),
    ("ban_ttl", "0", r"parameter 'ban_ttl': 0 is too small: at least 1 second", []),
    ("ban_max_ttl", '"2y"', r"parameter 'ban_max_ttl': '2y' is not a number of seconds", []),
    # Checked together at start.
    ("ban_ttl", '"2d"', r"parameter 'ban_ttl': 172800 s is longer than ban_max_ttl \(86400 s\)", [("ban_max_ttl", '"1d"')]),
    ("fleet_fallback", '"10"', r"parameter 'fleet_fallback': 10 s is shorter than leader_ttl \(30 s\)",
     [("redis_url", '"redis://127.0.0.1:9"'), ("leader_ttl", '"30"')]),
    ("leader_ttl", '"20"', r"parameter 'leader_ttl': 20 s is shorter than 3 × timeout \(30 s\)",
     [("redis_url", '"redis://127.0.0.1:9"'), ("timeout", "10")]),
]
