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

/* A copy of the shared counters and status, for RPC / MI replies. */
struct apiban_stats {
	uint64_t entries;       /* addresses in the published table */
	uint64_t ipv4;
	uint64_t ipv6;
	uint64_t checks;        /* lookups made by the routing script */
	uint64_t hits;          /* lookups that found a listed address */
	uint64_t last_sync;     /* unix time of the last successful pull, 0 = never */
	uint64_t last_id;       /* the feed's last numeric ID, 0 = none yet */
	uint64_t requests;      /* HTTP requests made to the feed */
	uint64_t sync_ms;       /* duration of the last successful pull */
	uint64_t syncs;         /* successful pulls */
	uint64_t sync_failures; /* failed requests */
	uint64_t rate_limited;  /* 429 replies */
	uint64_t skipped;       /* feed tokens that were not addresses */
	uint64_t overflow;      /* addresses dropped because the table was full (max_entries) */
	uint64_t expired;       /* entries dropped because their ttl passed */
	uint64_t allowed;       /* listed addresses let through by the allow-list */
	uint64_t backoff_until; /* unix time before which no request is made, 0 = none */
	uint64_t max_entries;
	char state[APIBAN_TEXT_LEN];      /* "ok", "syncing", "backoff: ...", "starting" */
	char last_error[APIBAN_TEXT_LEN]; /* "" when the last request succeeded */
};

/* The outcome of an admin check: result is one of APIBAN_LISTED, _NOT_LISTED, _BAD_ADDRESS. */
struct apiban_verdict {
	int result;
	char detail[APIBAN_TEXT_LEN]; /* "listed", "not listed", "allowed by allow 10.0.0.0/8", ... */
};

/* The module parameters, one list for both shims: each expands X(name) for every name. Each
 * value reaches the core as text through apiban_param(). */
#define APIBAN_PARAMS(X) \
	X(apikey) X(apikey_file) X(url) X(api_version) X(set) X(interval) X(max_entries) \
	X(timeout) X(rate_limit) X(snapshot_file) X(ttl) X(full_resync) X(allow) X(allow_file) \
	X(ca_file) X(proxy)

/* ---- host -> core ---------------------------------------------------------------------- */

/* Installs the host callbacks; call first (module load), before any parameter is set. */
void apiban_set_host(const struct apiban_host *host);

/* One module parameter as text (integers formatted by the shim). 0 ok, -1 refused (logged,
 * naming the parameter). Repeatable parameters (allow) accumulate. */
int apiban_param(const char *name, const char *value, size_t value_len);

/* Validates the parameters, creates the shared table and loads the snapshot. Main process,
 * before the fork. 0 ok, -1 the server must not start (the reason is logged). */
int apiban_mod_init(void);

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

#endif /* APIBAN_H */
