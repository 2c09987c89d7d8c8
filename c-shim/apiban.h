/*
 * apiban: the one contract between a host shim (Kamailio or OpenSIPS) and the Rust core.
 *
 * Plain types only: pointers with lengths, integers, fixed arrays. bindgen reads this file for
 * Rust, so the two sides can never disagree about it. The core knows nothing of the host: it
 * receives bytes and addresses and calls back only through struct apiban_host.
 *
 * Every function here is implemented in Rust, catches panics, and is safe to call from any
 * process of the server (after apiban_mod_init succeeded in the main process).
 */
#ifndef APIBAN_H
#define APIBAN_H

#include <stddef.h>
#include <stdint.h>

/* Results of a check: never 0, which would end the routing script. */
#define APIBAN_LISTED       1
#define APIBAN_NOT_LISTED  (-1)
#define APIBAN_BAD_ADDRESS (-2)
/* apiban_check: banned here or by another node of the fleet (apiban_ban), not listed by APIBAN. */
#define APIBAN_BANNED       2

/* Results of apiban_ban / apiban_unban in the script (never 0 either). */
#define APIBAN_QUEUED       1    /* handed to the refresher; in force within a few ms */
#define APIBAN_DROPPED     (-1)  /* the queue was full: dropped and counted in ban_drops */
/*      APIBAN_BAD_ADDRESS (-2)     the address is not an IP address */
#define APIBAN_BAD_TTL     (-3)  /* ttl 0 or above ban_max_ttl (a negative one means ban_ttl) */
#define APIBAN_BAD_REASON  (-4)  /* reason longer than APIBAN_REASON_LEN bytes or not printable */

/* The longest reason a ban may carry, in bytes. */
#define APIBAN_REASON_LEN 64

/* Log levels the core uses; each shim maps them to its host's LM_* macros. */
enum apiban_log_level {
	APIBAN_LOG_ERR = 0,
	APIBAN_LOG_WARN = 1,
	APIBAN_LOG_INFO = 2,
	APIBAN_LOG_DBG = 3,
};

/* What the core needs from the host. */
struct apiban_host {
	/* Writes one message (not NUL-terminated, no newline) to the host's log. */
	void (*log)(int level, const char *msg, size_t len);
	/* Non-zero when a message of this level would be written: lets the core skip formatting. */
	int (*log_enabled)(int level);
	/* Called by the refresher about once a second (Kamailio: cfg_update). May be NULL. */
	void (*tick)(void);
};

/* Text fields are NUL-terminated and always fit. */
#define APIBAN_TEXT_LEN 256

/* The statistics, one list for the core, both shims, RPC / MI replies, counters and
 * Prometheus: N(name, doc) is a number (uint64_t), T(name, doc) a text. The order is the
 * order of the replies. */
#define APIBAN_STATS(N, T) \
	N(entries, "addresses in the table") \
	N(ipv4, "IPv4 addresses in the table") \
	N(ipv6, "IPv6 addresses in the table") \
	N(checks, "lookups made by the routing script") \
	N(hits, "lookups that found a listed address") \
	N(allowed, "listed addresses let through by the allow-list") \
	N(last_sync, "unix time of the last successful pull (0: never)") \
	N(last_id, "the feed's last numeric ID (0: none yet)") \
	N(requests, "HTTP requests made to the APIBAN feed") \
	N(sync_ms, "duration of the last successful pull, ms") \
	N(syncs, "successful pulls of the APIBAN list") \
	N(sync_failures, "failed requests to the APIBAN feed") \
	N(rate_limited, "429 replies from the APIBAN feed") \
	N(skipped, "feed tokens that were not addresses") \
	N(overflow, "addresses left out because of max_entries (the oldest listed)") \
	N(expired, "entries dropped because their ttl passed, on arrival included") \
	N(backoff_until, "unix time before which no request is made (0: none)") \
	N(max_entries, "the max_entries parameter") \
	N(fleet_version, "fleet mode: the version of the shared list this node holds (0: none)") \
	N(fleet_syncs, "fleet mode: updates of the table taken from Redis (as a follower)") \
	N(redis_errors, "fleet mode: failed calls to Redis") \
	N(leading, "fleet mode: 1 while this node holds the lease and talks to APIBAN, else 0") \
	N(bans, "local bans in force (made by apiban_ban or apiban.ban here or on another node of the fleet)") \
	N(bans_made, "bans made on this node (script and RPC/MI)") \
	N(ban_drops, "bans and unbans dropped because the queue to the refresher was full") \
	N(ban_evictions, "local bans evicted, oldest first, to stay within max_bans") \
	N(local_hits, "lookups that found an address banned locally") \
	N(settings_differ, "fleet mode: 1 while this node's settings differ from those the shared list was made with (it neither leads nor follows), else 0") \
	T(last_error, "the last request's error, empty when it succeeded") \
	T(state, "ok, syncing, backoff ..., starting") \
	T(role, "standalone, leader, follower, or fallback (Redis lost for fleet_fallback)") \
	T(leader, "fleet mode: the node_id of the node that holds the lease")

#define APIBAN_STAT_NONE(n, doc)
#define APIBAN_STAT_ONE(n, doc) +1
#define APIBAN_STAT_NUMBER_FIELD(n, doc) uint64_t n;
#define APIBAN_STAT_TEXT_FIELD(n, doc) char n[APIBAN_TEXT_LEN];

/* How many numbers and texts the list has. */
enum apiban_stat_count {
	APIBAN_STAT_NUMBERS = 0 APIBAN_STATS(APIBAN_STAT_ONE, APIBAN_STAT_NONE),
	APIBAN_STAT_TEXTS = 0 APIBAN_STATS(APIBAN_STAT_NONE, APIBAN_STAT_ONE),
};

/* A copy of the statistics, for RPC / MI replies: every number, then every text (NUL-terminated). */
struct apiban_stats {
	APIBAN_STATS(APIBAN_STAT_NUMBER_FIELD, APIBAN_STAT_NONE)
	APIBAN_STATS(APIBAN_STAT_NONE, APIBAN_STAT_TEXT_FIELD)
};

/* The outcome of an admin check: result is one of APIBAN_LISTED, _NOT_LISTED, _BAD_ADDRESS. */
struct apiban_verdict {
	int result;
	char result_text[16]; /* "listed", "not listed", "bad address" */
	char detail[APIBAN_TEXT_LEN]; /* "listed", "not listed", "allowed by allow 10.0.0.0/8", ... */
};

/* The module parameters, one list for both shims: each expands X(name) for every name. Each
 * value reaches the core as text through apiban_param(). */
#define APIBAN_PARAMS(X) \
	X(apikey) X(apikey_file) X(url) X(api_version) X(set) X(interval) X(max_entries) \
	X(timeout) X(rate_limit) X(snapshot_file) X(ttl) X(full_resync) X(allow) X(allow_file) \
	X(ca_file) X(proxy) \
	X(redis_url) X(redis_prefix) X(node_id) X(leader_ttl) X(fleet_fallback) \
	X(max_bans) X(ban_ttl) X(ban_max_ttl) X(huge_pages)

/* ---- host -> core ---------------------------------------------------------------------- */

/* Installs the host callbacks; call first (module load), before any parameter is set. */
void apiban_set_host(const struct apiban_host *host);

/* One module parameter as the host's modparam hands it over: an integer (is_int != 0, the value
 * is the pointer itself) or a NUL-terminated string. 0 ok, -1 refused (logged, naming the
 * parameter). Repeatable parameters (allow) accumulate. */
int apiban_param(const char *name, int is_int, const void *value);

/* Validates the parameters, creates the shared table and loads the snapshot. Main process,
 * before the fork. 0 ok, -1 the server must not start (the reason is logged). */
int apiban_mod_init(void);

/* In every process the host forks, before it serves: process_no is the host's index of the
 * process, which picks its own slot of the per-process counters. */
void apiban_child_init(int process_no);

/* Body of the dedicated refresher process. Never returns. */
void apiban_refresher_main(void);

/* Script check of a raw address: len 4 (IPv4) or 16 (IPv6, v4-mapped counts as IPv4). */
int apiban_check_addr(const unsigned char *addr, size_t len);

/* Script check of address text: IPv4 or IPv6, with or without [brackets]. */
int apiban_check_text(const char *text, size_t len);

/* Copies the shared counters. 0 ok, -1 not initialised. */
int apiban_stats_get(struct apiban_stats *out);

/* Asks the refresher for a full pull now. 0 ok, -1 not initialised. */
int apiban_reload(void);

/* Admin check: like apiban_check_text, with the reason. Does not count in checks/hits. */
int apiban_admin_check(const char *text, size_t len, struct apiban_verdict *out);

/* ---- local bans ------------------------------------------------------------------------ */

/* A reply as a list of named fields, which each shim turns into its RPC struct or MI object in
 * this order. name is a static NUL-terminated string; a field is a number or a text. */
#define APIBAN_REPLY_FIELDS 16
struct apiban_field {
	const char *name;
	int is_number;
	uint64_t number;
	char text[APIBAN_TEXT_LEN];
};
struct apiban_reply {
	int count;
	struct apiban_field fields[APIBAN_REPLY_FIELDS];
	char error[APIBAN_TEXT_LEN]; /* why a command was refused (its return was -1) */
};

/* Script: ban ip for ttl seconds (ttl < 0: the ban_ttl parameter) with an optional reason
 * (NULL or len 0: none). Never waits, makes no system call: the ban is queued to the refresher.
 * Returns APIBAN_QUEUED or APIBAN_DROPPED, _BAD_ADDRESS, _BAD_TTL, _BAD_REASON (logged, at most
 * once per 10 s per process). */
int apiban_ban(const char *ip, size_t ip_len, long long ttl, const char *reason, size_t reason_len);

/* Script: lift a local ban of ip; for an address APIBAN lists, exempt it until the listing
 * expires. Queued like apiban_ban; the same results. */
int apiban_unban(const char *ip, size_t ip_len);

/* RPC/MI apiban.ban IP [TTL] [REASON]: ttl and reason are text as the operator typed them (NULL:
 * absent). Waits (at most 2 s) until the ban is in force. 0 done (out: what is now in force),
 * -1 refused (out->error says why, or is empty when the module is not initialised; nothing
 * changed). */
int apiban_admin_ban(const char *ip, size_t ip_len, const char *ttl, size_t ttl_len,
		const char *reason, size_t reason_len, struct apiban_reply *out);

/* RPC/MI apiban.unban IP: as apiban_admin_ban. */
int apiban_admin_unban(const char *ip, size_t ip_len, struct apiban_reply *out);

/* RPC/MI apiban.lookup IP: the verdict and why (listed by APIBAN, banned locally, allowed,
 * exempted, not listed). 0 done, -1 refused (a bad address: out->error). */
int apiban_admin_lookup(const char *ip, size_t ip_len, struct apiban_reply *out);

/* RPC/MI apiban.bans: calls each(ctx, ban) for at most max local bans and exemptions, newest
 * first; returns how many there are in force (which may be more than were listed), -1 not
 * initialised. */
int apiban_admin_bans(size_t max, void (*each)(void *ctx, const struct apiban_reply *ban), void *ctx);

#endif /* APIBAN_H */
