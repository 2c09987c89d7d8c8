/*
 * apiban module for OpenSIPS 3.6: the host side of the boundary.
 *
 * Translation only: OpenSIPS's export tables (parameters, the script functions, MI commands,
 * statistics, the refresher process), the version strings and the LM_* logger. Every decision
 * is made by the Rust core behind c-shim/apiban.h.
 *
 * The one symbol OpenSIPS looks up with dlsym, `exports`, is defined in Rust
 * (src/host/opensips.rs) and points at the tables and strings here: rustc's cdylib linking drops
 * data symbols defined in C. The tables stay in C, compiled against the target tree's headers,
 * so their layouts (mi_export_t changed in 4.0) always match the server. The _Static_asserts
 * and apiban_osips_exports_size guard the Rust mirror of struct module_exports.
 */

#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <stddef.h>

#include "sr_module.h"
#include "dprint.h"
#include "version.h"
#include "statistics.h"
#include "globals.h"
#include "mi/mi.h"
#include "ip_addr.h"
#include "parser/msg_parser.h"

#include "apiban.h"

/* What MODULE_VERSION puts in ver_info, as arrays so that Rust can take their addresses. */
const char apiban_osips_name[] = "apiban";
const char apiban_osips_version[] = OPENSIPS_FULL_VERSION;
const char apiban_osips_flags[] = OPENSIPS_COMPILE_FLAGS;
const char apiban_osips_scm_type[] = VERSIONTYPE;
const char apiban_osips_scm_rev[] = THISREVISION;
const size_t apiban_osips_exports_size = sizeof(struct module_exports);

/* The layout src/host/opensips.rs mirrors (LP64). */
_Static_assert(sizeof(struct module_exports) == 184, "module_exports layout changed: update src/host/opensips.rs");
_Static_assert(offsetof(struct module_exports, type) == 8, "module_exports layout changed");
_Static_assert(offsetof(struct module_exports, ver_info) == 16, "module_exports layout changed");
_Static_assert(offsetof(struct module_exports, dlflags) == 48, "module_exports layout changed");
_Static_assert(offsetof(struct module_exports, load_f) == 56, "module_exports layout changed");
_Static_assert(offsetof(struct module_exports, cmds) == 72, "module_exports layout changed");
_Static_assert(offsetof(struct module_exports, params) == 88, "module_exports layout changed");
_Static_assert(offsetof(struct module_exports, stats) == 96, "module_exports layout changed");
_Static_assert(offsetof(struct module_exports, mi_cmds) == 104, "module_exports layout changed");
_Static_assert(offsetof(struct module_exports, procs) == 128, "module_exports layout changed");
_Static_assert(offsetof(struct module_exports, preinit_f) == 136, "module_exports layout changed");
_Static_assert(offsetof(struct module_exports, init_f) == 144, "module_exports layout changed");
_Static_assert(offsetof(struct module_exports, reload_ack_f) == 176, "module_exports layout changed");
_Static_assert(MOD_TYPE_DEFAULT == 1, "enum module_type changed: update src/host/opensips.rs");
_Static_assert(DEFAULT_DLFLAGS == 0, "DEFAULT_DLFLAGS changed: update src/host/opensips.rs");

/* ---- logging ---------------------------------------------------------------------------- */

/* The core's text is always an argument, never a format. */
static void apiban_core(int level, const char *msg, size_t len)
{
	int n = len > 4096 ? 4096 : (int)len;
	switch (level) {
	case APIBAN_LOG_ERR: LM_ERR("%.*s\n", n, msg); break;
	case APIBAN_LOG_WARN: LM_WARN("%.*s\n", n, msg); break;
	case APIBAN_LOG_INFO: LM_INFO("%.*s\n", n, msg); break;
	default: LM_DBG("%.*s\n", n, msg); break;
	}
}

static int apiban_osips_log_enabled(int level)
{
	static const int map[] = {L_ERR, L_WARN, L_INFO, L_DBG};
	return is_printable((level >= 0 && level <= 3) ? map[level] : L_DBG);
}

/* No tick: OpenSIPS has no per-process config to refresh. */
static const struct apiban_host apiban_osips_host = {
	apiban_core, apiban_osips_log_enabled, NULL};

/* ---- parameters: each one is handed to the core as text ------------------------------- */

static int apiban_osips_param(const char *name, modparam_t type, void *val)
{
	return apiban_param(name, (PARAM_TYPE_MASK(type) & INT_PARAM) != 0, val) == 0 ? 0 : -1;
}

#define APIBAN_PARAM(n)                                            \
	static int apiban_osips_param_##n(modparam_t type, void *val) \
	{                                                              \
		return apiban_osips_param(#n, type, val);                  \
	}
/* One entry takes both types: modparam("apiban", "interval", "abc") reaches the core, which
 * refuses it with a message naming the parameter, instead of OpenSIPS's "type mismatch". */
#define APIBAN_PARAM_ENTRY(n) \
	{#n, STR_PARAM | INT_PARAM | USE_FUNC_PARAM, (void *)apiban_osips_param_##n},

APIBAN_PARAMS(APIBAN_PARAM)

const param_export_t apiban_osips_params[] = {
	APIBAN_PARAMS(APIBAN_PARAM_ENTRY)
	{0, 0, 0}};

/* ---- script functions ------------------------------------------------------------------ */

/* apiban_check(): the packet's source address; apiban_check(ip): the (expanded) text, which
 * OpenSIPS hands over as a str that is not NUL-terminated. 1 listed, 2 banned locally, -1 not,
 * -2 bad address.
 *
 * No fixup of our own for ip, unlike Kamailio's shim: OpenSIPS's core already reads a bare
 * variable (apiban_check($var(ip)), apiban_check($hdr(X-Real-IP))) with pv_get_spec_value and
 * hands over its value, without pv_printf (GPARAM_TYPE_PVS in mod_fix.c); a quoted "$var(ip)" is
 * a format, which it prints. A module fixup on a CMD_PARAM_STR could not take the quoted form's
 * pv_spec_t over either: the core calls it at start-up with the quoted text and, for a bare
 * variable, on every call with the value, and nothing tells the two apart. (A bare variable
 * that is null or an integer is refused by the core before this function: -1, logged.) */
static int w_apiban_check(struct sip_msg *msg, str *ip)
{
	if (ip != NULL)
		return apiban_check_text(ip->s, (size_t)(ip->len > 0 ? ip->len : 0));
	if (msg == NULL)
		return APIBAN_BAD_ADDRESS;
	return apiban_check_addr(msg->rcv.src_ip.u.addr, msg->rcv.src_ip.len);
}

/* apiban_ban(ip[, ttl[, reason]]): an absent ttl is -1 (the core's ban_ttl), an absent reason
 * none. The core's result as it is: 1 queued, -1 dropped, -2 bad address, -3 bad ttl, -4 bad
 * reason (never 0). */
static int w_apiban_ban(struct sip_msg *msg, str *ip, int *ttl, str *reason)
{
	return apiban_ban(ip->s, (size_t)(ip->len > 0 ? ip->len : 0), ttl != NULL ? *ttl : -1,
			reason != NULL ? reason->s : NULL,
			(size_t)(reason != NULL && reason->len > 0 ? reason->len : 0));
}

/* apiban_unban(ip): the same results as apiban_ban. */
static int w_apiban_unban(struct sip_msg *msg, str *ip)
{
	return apiban_unban(ip->s, (size_t)(ip->len > 0 ? ip->len : 0));
}

const cmd_export_t apiban_osips_cmds[] = {
	{"apiban_check", (cmd_function)w_apiban_check, {
		{CMD_PARAM_STR | CMD_PARAM_OPT, 0, 0},
		{0, 0, 0}},
		ALL_ROUTES},
	{"apiban_ban", (cmd_function)w_apiban_ban, {
		{CMD_PARAM_STR, 0, 0},
		{CMD_PARAM_INT | CMD_PARAM_OPT, 0, 0},
		{CMD_PARAM_STR | CMD_PARAM_OPT, 0, 0},
		{0, 0, 0}},
		ALL_ROUTES},
	{"apiban_unban", (cmd_function)w_apiban_unban, {
		{CMD_PARAM_STR, 0, 0},
		{0, 0, 0}},
		ALL_ROUTES},
	{0, 0, {{0, 0, 0}}, 0}};

/* ---- statistics: read from the core's shared counters on every query ------------------- */

#define APIBAN_OSIPS_STAT_FN(f, doc)                      \
	static unsigned long apiban_osips_stat_##f(void *ctx) \
	{                                                     \
		struct apiban_stats st;                           \
		if (apiban_stats_get(&st) < 0)                    \
			return 0;                                     \
		return (unsigned long)st.f;                       \
	}
#define APIBAN_OSIPS_STAT_ENTRY(f, doc) {#f, STAT_IS_FUNC, (stat_var **)apiban_osips_stat_##f},

APIBAN_STATS(APIBAN_OSIPS_STAT_FN, APIBAN_STAT_NONE)

/* Every number of APIBAN_STATS, as Kamailio registers them: get_statistics apiban: and the
 * prometheus module see the same set on both servers. */
const stat_export_t apiban_osips_stats[] = {
	APIBAN_STATS(APIBAN_OSIPS_STAT_ENTRY, APIBAN_STAT_NONE)
	{0, 0, 0}};

/* ---- MI -------------------------------------------------------------------------------- */

#define APIBAN_MI_NUM(obj, name, v) \
	(add_mi_number(obj, MI_SSTR(name), (double)(v)) < 0)
#define APIBAN_MI_STR(obj, name, v) \
	(add_mi_string(obj, MI_SSTR(name), v, (int)strlen(v)) < 0)

static mi_response_t *apiban_mi_stats(const mi_params_t *params, struct mi_handler *async_hdl)
{
	struct apiban_stats st;
	mi_response_t *resp;
	mi_item_t *obj;

	if (apiban_stats_get(&st) < 0)
		return init_mi_error(500, MI_SSTR("apiban is not initialised"));
	resp = init_mi_result_object(&obj);
	if (resp == NULL)
		return NULL;
	/* The fields and order of Kamailio's apiban.stats: the one list. */
#define APIBAN_MI_NUMBER(n, doc) || APIBAN_MI_NUM(obj, #n, st.n)
#define APIBAN_MI_TEXT(n, doc) || APIBAN_MI_STR(obj, #n, st.n)
	if (0 APIBAN_STATS(APIBAN_MI_NUMBER, APIBAN_MI_TEXT)) {
		free_mi_response(resp);
		return NULL;
	}
	return resp;
}

static mi_response_t *apiban_mi_reload(const mi_params_t *params, struct mi_handler *async_hdl)
{
	if (apiban_reload() < 0)
		return init_mi_error(500, MI_SSTR("apiban is not initialised"));
	return init_mi_result_string(MI_SSTR("Ok. Full pull requested."));
}

static mi_response_t *apiban_mi_check(const mi_params_t *params, struct mi_handler *async_hdl)
{
	struct apiban_verdict v;
	mi_response_t *resp;
	mi_item_t *obj;
	char *ip;
	int ip_len;

	if (get_mi_string_param(params, "ip", &ip, &ip_len) < 0)
		return init_mi_param_error();
	if (apiban_admin_check(ip, (size_t)(ip_len > 0 ? ip_len : 0), &v) < 0)
		return init_mi_error(500, MI_SSTR("apiban is not initialised"));
	resp = init_mi_result_object(&obj);
	if (resp == NULL)
		return NULL;
	if (add_mi_string(obj, MI_SSTR("ip"), ip, ip_len) < 0
			|| APIBAN_MI_NUM(obj, "listed", v.result == APIBAN_LISTED ? 1 : 0)
			|| APIBAN_MI_STR(obj, "result", v.result_text)
			|| APIBAN_MI_STR(obj, "detail", v.detail)) {
		free_mi_response(resp);
		return NULL;
	}
	return resp;
}

/* ---- MI: local bans -------------------------------------------------------------------- */

#define APIBAN_MI_BANS_DEFAULT 100
#define APIBAN_MI_BANS_MAX 1000

/* An MI parameter as text (0 ok, -1 missing or not a string or number). A number arrives
 * formatted in OpenSIPS's one static buffer (sint2str), which the next number overwrites: so
 * whatever fits is copied into buf. */
static int apiban_mi_text(const mi_params_t *params, char *name, char *buf, size_t size,
		char **s, int *len)
{
	if (get_mi_string_param(params, name, s, len) < 0)
		return -1;
	if (*len < 0)
		*len = 0;
	if ((size_t)*len < size) {
		memcpy(buf, *s, (size_t)*len);
		buf[*len] = '\0';
		*s = buf;
	}
	return 0;
}

/* A struct apiban_reply as the members of an MI object, in its order. */
static int apiban_mi_fields(mi_item_t *obj, const struct apiban_reply *r)
{
	int i;

	for (i = 0; i < r->count && i < APIBAN_REPLY_FIELDS; i++) {
		char *name = (char *)r->fields[i].name;
		if (r->fields[i].is_number
				? add_mi_number(obj, name, (int)strlen(name), (double)r->fields[i].number) < 0
				: add_mi_string(obj, name, (int)strlen(name), r->fields[i].text,
					(int)strlen(r->fields[i].text)) < 0)
			return -1;
	}
	return 0;
}

/* The reply of apiban_ban, _unban and _lookup: an object of the core's fields, or its error (a
 * -1 without one: the core is not initialised). */
static mi_response_t *apiban_mi_reply(int rc, const struct apiban_reply *r)
{
	mi_response_t *resp;
	mi_item_t *obj;

	if (rc < 0) {
		if (r->error[0] != '\0')
			return init_mi_error(400, r->error, (int)strlen(r->error));
		return init_mi_error(500, MI_SSTR("apiban is not initialised"));
	}
	resp = init_mi_result_object(&obj);
	if (resp == NULL)
		return NULL;
	if (apiban_mi_fields(obj, r) < 0) {
		free_mi_response(resp);
		return NULL;
	}
	return resp;
}

/* apiban_ban ip [ttl [reason]]: n is how many of them the recipe has; the absent ones
 * reach the core as NULL. */
static mi_response_t *apiban_mi_ban(const mi_params_t *params, int n)
{
	char ip_buf[APIBAN_TEXT_LEN], ttl_buf[APIBAN_TEXT_LEN], reason_buf[APIBAN_TEXT_LEN];
	char *ip, *ttl = NULL, *reason = NULL;
	int ip_len, ttl_len = 0, reason_len = 0;
	struct apiban_reply out;

	if (apiban_mi_text(params, "ip", ip_buf, sizeof(ip_buf), &ip, &ip_len) < 0
			|| (n >= 2 && apiban_mi_text(params, "ttl", ttl_buf, sizeof(ttl_buf), &ttl, &ttl_len) < 0)
			|| (n >= 3 && apiban_mi_text(params, "reason", reason_buf, sizeof(reason_buf), &reason,
					&reason_len) < 0))
		return init_mi_param_error();
	out.count = 0;
	out.error[0] = '\0';
	return apiban_mi_reply(apiban_admin_ban(ip, (size_t)ip_len, ttl, (size_t)ttl_len, reason,
			(size_t)reason_len, &out), &out);
}

static mi_response_t *apiban_mi_ban1(const mi_params_t *params, struct mi_handler *async_hdl)
{
	return apiban_mi_ban(params, 1);
}

static mi_response_t *apiban_mi_ban2(const mi_params_t *params, struct mi_handler *async_hdl)
{
	return apiban_mi_ban(params, 2);
}

static mi_response_t *apiban_mi_ban3(const mi_params_t *params, struct mi_handler *async_hdl)
{
	return apiban_mi_ban(params, 3);
}

static mi_response_t *apiban_mi_unban(const mi_params_t *params, struct mi_handler *async_hdl)
{
	char ip_buf[APIBAN_TEXT_LEN];
	char *ip;
	int ip_len;
	struct apiban_reply out;

	if (apiban_mi_text(params, "ip", ip_buf, sizeof(ip_buf), &ip, &ip_len) < 0)
		return init_mi_param_error();
	out.count = 0;
	out.error[0] = '\0';
	return apiban_mi_reply(apiban_admin_unban(ip, (size_t)ip_len, &out), &out);
}

static mi_response_t *apiban_mi_lookup(const mi_params_t *params, struct mi_handler *async_hdl)
{
	char ip_buf[APIBAN_TEXT_LEN];
	char *ip;
	int ip_len;
	struct apiban_reply out;

	if (apiban_mi_text(params, "ip", ip_buf, sizeof(ip_buf), &ip, &ip_len) < 0)
		return init_mi_param_error();
	out.count = 0;
	out.error[0] = '\0';
	return apiban_mi_reply(apiban_admin_lookup(ip, (size_t)ip_len, &out), &out);
}

struct apiban_mi_list {
	mi_item_t *bans; /* the array */
	int failed;
};

static void apiban_mi_each_ban(void *c, const struct apiban_reply *ban)
{
	struct apiban_mi_list *l = c;
	mi_item_t *obj;

	if (l->failed)
		return;
	obj = add_mi_object(l->bans, NULL, 0);
	if (obj == NULL || apiban_mi_fields(obj, ban) < 0)
		l->failed = 1;
}

/* apiban_bans [max]: { bans: [ {address, kind, made_at, expires, node, reason}, ... ], total } */
static mi_response_t *apiban_mi_bans(int max)
{
	struct apiban_mi_list l = {NULL, 0};
	mi_response_t *resp;
	mi_item_t *obj;
	int total;

	if (max < 1)
		return init_mi_error(400, MI_SSTR("apiban_bans [max]: max is 1 to 1000"));
	resp = init_mi_result_object(&obj);
	if (resp == NULL)
		return NULL;
	l.bans = add_mi_array(obj, MI_SSTR("bans"));
	if (l.bans == NULL) {
		free_mi_response(resp);
		return NULL;
	}
	total = apiban_admin_bans((size_t)(max < APIBAN_MI_BANS_MAX ? max : APIBAN_MI_BANS_MAX),
			apiban_mi_each_ban, &l);
	if (total < 0) {
		free_mi_response(resp);
		return init_mi_error(500, MI_SSTR("apiban is not initialised"));
	}
	if (l.failed || APIBAN_MI_NUM(obj, "total", total)) {
		free_mi_response(resp);
		return NULL;
	}
	return resp;
}

static mi_response_t *apiban_mi_bans0(const mi_params_t *params, struct mi_handler *async_hdl)
{
	return apiban_mi_bans(APIBAN_MI_BANS_DEFAULT);
}

static mi_response_t *apiban_mi_bans1(const mi_params_t *params, struct mi_handler *async_hdl)
{
	int max;

	if (get_mi_int_param(params, "max", &max) < 0)
		return init_mi_param_error();
	return apiban_mi_bans(max);
}

const mi_export_t apiban_osips_mi[] = {
	{"apiban_stats", "Counters and sync status of the APIBAN table.", 0, 0, {
		{apiban_mi_stats, {0}},
		{EMPTY_MI_RECIPE}}},
	{"apiban_reload", "Pull the full APIBAN list now (the refresher acts within a second).", 0, 0, {
		{apiban_mi_reload, {0}},
		{EMPTY_MI_RECIPE}}},
	{"apiban_check", "Tell whether an address is listed: apiban_check ip=IP.", 0, 0, {
		{apiban_mi_check, {"ip", 0}},
		{EMPTY_MI_RECIPE}}},
	{"apiban_ban", "Ban an address here (and on every node, in fleet mode): apiban_ban ip=IP [ttl=TTL] [reason=REASON]; ttl in seconds or like 1h, absent or empty: ban_ttl.", 0, 0, {
		{apiban_mi_ban1, {"ip", 0}},
		{apiban_mi_ban2, {"ip", "ttl", 0}},
		{apiban_mi_ban3, {"ip", "ttl", "reason", 0}},
		{EMPTY_MI_RECIPE}}},
	{"apiban_unban", "Lift a local ban, or let an address APIBAN lists through until its listing ends: apiban_unban ip=IP.", 0, 0, {
		{apiban_mi_unban, {"ip", 0}},
		{EMPTY_MI_RECIPE}}},
	{"apiban_lookup", "Tell whether an address is refused and why (listed, banned, allowed, exempted): apiban_lookup ip=IP.", 0, 0, {
		{apiban_mi_lookup, {"ip", 0}},
		{EMPTY_MI_RECIPE}}},
	{"apiban_bans", "List the local bans and exemptions, newest first: apiban_bans [max=MAX] (default 100, at most 1000).", 0, 0, {
		{apiban_mi_bans0, {0}},
		{apiban_mi_bans1, {"max", 0}},
		{EMPTY_MI_RECIPE}}},
	{EMPTY_MI_EXPORT}};

/* ---- the refresher process ------------------------------------------------------------- */

/* Forked by the core after every module's init_f; flags 0: a sleeping loop, no IPC pipe. */
static void apiban_osips_refresher(int rank)
{
	apiban_refresher_main(); /* never returns */
	exit(-1);
}

const proc_export_t apiban_osips_procs[] = {
	{"APIBAN REFRESHER", 0, 0, apiban_osips_refresher, 1, 0},
	{0, 0, 0, 0, 0, 0}};

/* ---- module life cycle ----------------------------------------------------------------- */

/* load_f: called right after dlopen, before any modparam of this module is set. */
int apiban_osips_load(void)
{
	apiban_set_host(&apiban_osips_host);
	return 0;
}

/* init_child_f: in every process, after its fork. */
int apiban_osips_child_init(int rank)
{
	apiban_child_init(process_no);
	return 0;
}

/* init_f: in the attendant, before any fork. */
int apiban_osips_mod_init(void)
{
	return apiban_mod_init() < 0 ? -1 : 0;
}
