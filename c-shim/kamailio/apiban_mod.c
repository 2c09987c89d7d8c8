/*
 * apiban module for Kamailio (5.6 to 6.0): the host side of the boundary.
 *
 * Translation only: Kamailio's export tables, parameter setters, the script functions (check,
 * ban, unban), RPC and KEMI wrappers, the statistics (counters read from the core's shared
 * values), the refresher process registration and the LM_* logger. Every decision is made by
 * the Rust core behind c-shim/apiban.h.
 *
 * The symbols Kamailio looks up with dlsym (exports, module_version, module_flags, mod_register)
 * are defined in Rust (src/host/kamailio.rs) and point at the tables here: rustc's cdylib linking
 * drops data symbols defined in C. The _Static_asserts and apiban_kam_exports_size guard the
 * Rust mirror of struct module_exports.
 */

#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <sys/socket.h>

#include "core/sr_module.h"
#include "core/ver_defs.h"
#include "core/dprint.h"
#include "core/mod_fix.h"
#include "core/pvar.h"
#include "core/mem/mem.h"
#include "core/rpc.h"
#include "core/pt.h"
#include "core/ip_addr.h"
#include "core/kemi.h"
#include "core/counters.h"
#include "core/cfg/cfg_struct.h"
#include "core/parser/msg_parser.h"

#include "apiban.h"

/* Version strings as arrays, so that Rust can take their addresses for module_version/flags. */
const char apiban_kam_version[] = SER_FULL_VERSION;
const char apiban_kam_flags[] = SER_COMPILE_FLAGS;
const char apiban_kam_name[] = "apiban";
const size_t apiban_kam_exports_size = sizeof(struct module_exports);

_Static_assert(sizeof(struct module_exports) == 80, "module_exports layout changed: update src/host/kamailio.rs");
_Static_assert(offsetof(struct module_exports, init_mod_f) == 56, "module_exports layout changed");

/* ---- logging ---------------------------------------------------------------------------- */

static void apiban_kam_log(int level, const char *msg, size_t len)
{
	int n = len > 4096 ? 4096 : (int)len;
	/* LOG_FN: the module's prefix without this wrapper's file, line and function. */
	switch(level) {
		case APIBAN_LOG_ERR: LOG_FN(DEFAULT_FACILITY, L_ERR, "apiban: ", "%.*s\n", n, msg); break;
		case APIBAN_LOG_WARN: LOG_FN(DEFAULT_FACILITY, L_WARN, "apiban: ", "%.*s\n", n, msg); break;
		case APIBAN_LOG_INFO: LOG_FN(DEFAULT_FACILITY, L_INFO, "apiban: ", "%.*s\n", n, msg); break;
		default: LOG_FN(DEFAULT_FACILITY, L_DBG, "apiban: ", "%.*s\n", n, msg); break;
	}
}

static int apiban_kam_log_enabled(int level)
{
	static const int map[] = {L_ERR, L_WARN, L_INFO, L_DBG};
	int l = (level >= 0 && level <= 3) ? map[level] : L_DBG;
	return is_printable(l);
}

static void apiban_kam_tick(void)
{
	cfg_update();
}

static const struct apiban_host apiban_kam_host = {
	apiban_kam_log, apiban_kam_log_enabled, apiban_kam_tick};

/* ---- parameters: each one is handed to the core as text ------------------------------- */

static int apiban_kam_param(const char *name, modparam_t type, void *val)
{
	return apiban_param(name, PARAM_TYPE_MASK(type) == PARAM_INT, val) == 0 ? 0 : -1;
}

#define APIBAN_PARAM(n)                                          \
	static int apiban_kam_param_##n(modparam_t type, void *val) \
	{                                                            \
		return apiban_kam_param(#n, type, val);                  \
	}
#define APIBAN_PARAM_ENTRIES(n)                                       \
	{#n, PARAM_STRING | PARAM_USE_FUNC, (void *)apiban_kam_param_##n}, \
	{#n, PARAM_INT | PARAM_USE_FUNC, (void *)apiban_kam_param_##n},

APIBAN_PARAMS(APIBAN_PARAM)

/* Both an int and a string entry per name: modparam("apiban", "interval", "abc") then reaches
 * the core, which refuses it with a message naming the parameter, instead of the core's
 * "parameter not found". */
param_export_t apiban_kam_params[] = {
	APIBAN_PARAMS(APIBAN_PARAM_ENTRIES)
	{0, 0, 0}};

/* ---- script functions ------------------------------------------------------------------ */

static int apiban_kam_check_src(sip_msg_t *msg)
{
	return apiban_check_addr(msg->rcv.src_ip.u.addr, msg->rcv.src_ip.len);
}

static int w_apiban_check0(sip_msg_t *msg, char *p1, char *p2)
{
	return apiban_kam_check_src(msg);
}

static int apiban_kam_check_str(str *s)
{
	return apiban_check_text(s->s, (size_t)s->len);
}

/* An address parameter (apiban_check, apiban_ban, apiban_unban) as its fixup leaves it: parsed
 * by the core as text with variables (fixup_spve_null), and, when it is exactly one variable
 * ($var(ip), $hdr(X-Real-IP), $(si{s.trim})...), that variable: read with pv_get_spec_value,
 * its value is the text as it is, where fixup_get_svalue would format it with pv_printf into the
 * core's buffer first (about 130 instructions more a call). Text, or text around variables,
 * keeps the core's formatting. */
typedef struct apiban_kam_ip
{
	gparam_t *fmt; /* owns what the core parsed */
	pv_spec_t *pv; /* fmt's one variable, or NULL: format fmt */
} apiban_kam_ip_t;

/* apiban_check("$si") is how most configs spell the source check. Formatting the address as
 * text and parsing it back costs several hundred instructions; so the fixup recognises a
 * parameter that is exactly the source-address variable ($si or $src_ip, no transformation,
 * nothing around it) and leaves this marker in its place, and the call reads msg->rcv.src_ip
 * as apiban_check() does. */
static char apiban_kam_src_marker;

static int apiban_kam_is_src_pv(pv_spec_t *pv)
{
	str si = str_init("$si");
	pv_spec_t spec;

	if(pv == NULL || pv->trans != NULL)
		return 0;
	memset(&spec, 0, sizeof(spec));
	if(pv_parse_spec2(&si, &spec, 1) == NULL)
		return 0;
	return pv->getf == spec.getf && pv->type == spec.type;
}

/* src_raw: whether exactly $si may become the marker (apiban_check only: the others take text). */
static int apiban_kam_fixup_ip(void **param, int src_raw)
{
	apiban_kam_ip_t *ip;
	fparam_t *fp;
	pv_elem_t *e;

	if(fixup_spve_null(param, 1) < 0)
		return -1;
	fp = (fparam_t *)*param;
	ip = pkg_malloc(sizeof(*ip));
	if(ip == NULL) {
		PKG_MEM_ERROR;
		fixup_free_spve_null(param, 1);
		return -1;
	}
	ip->fmt = fp;
	ip->pv = NULL;
	/* One element, no text before it, no next: the parameter is that variable alone. A
	 * variable of type PVT_NONE is one pv_printf would skip: left to it. */
	if(fp->type == FPARAM_PVE && (e = fp->v.pve) != NULL && e->next == NULL && e->text.len == 0
			&& e->spec != NULL && e->spec->type != PVT_NONE)
		ip->pv = e->spec;
	if(src_raw && apiban_kam_is_src_pv(ip->pv)) {
		pkg_free(ip);
		fixup_free_spve_null(param, 1);
		*param = &apiban_kam_src_marker;
		return 0;
	}
	*param = ip;
	return 0;
}

static int apiban_kam_free_ip(void **param)
{
	apiban_kam_ip_t *ip = (apiban_kam_ip_t *)*param;

	if(*param == (void *)&apiban_kam_src_marker || ip == NULL)
		return 0;
	*param = ip->fmt;
	pkg_free(ip);
	return fixup_free_spve_null(param, 1);
}

/* The text of an address parameter into *s (0), or -1 when the core cannot format it. The same
 * text the formatting gives: a variable that cannot be read is none, a null one "<null>" (the
 * core's own spelling), an integer its digits; so the script sees the same results, and the
 * same log line, as before. Release val with apiban_kam_ip_done once s is used. */
static inline int apiban_kam_ip_text(sip_msg_t *msg, apiban_kam_ip_t *ip, str *s, pv_value_t *val)
{
	if(ip->pv == NULL) {
		val->flags = 0;
		return fixup_get_svalue(msg, ip->fmt, s);
	}
	if(pv_get_spec_value(msg, ip->pv, val) != 0) {
		val->flags = 0;
		s->s = "";
		s->len = 0;
		return 0;
	}
	*s = (val->flags & PV_VAL_NULL) ? *pv_get_null_str() : val->rs;
	return 0;
}

/* A value some variables allocate for the caller (PV_VAL_PKG/SHM) is freed here. */
static inline void apiban_kam_ip_done(pv_value_t *val)
{
	if(val->flags & (PV_VAL_PKG | PV_VAL_SHM))
		pv_value_destroy(val);
}

static int fixup_apiban_check(void **param, int param_no)
{
	return apiban_kam_fixup_ip(param, 1);
}

static int fixup_free_apiban_check(void **param, int param_no)
{
	return apiban_kam_free_ip(param);
}

static int w_apiban_check1(sip_msg_t *msg, char *p1, char *p2)
{
	pv_value_t val;
	str ip;
	int rc;

	if(p1 == &apiban_kam_src_marker)
		return apiban_kam_check_src(msg);
	if(apiban_kam_ip_text(msg, (apiban_kam_ip_t *)p1, &ip, &val) < 0)
		return APIBAN_BAD_ADDRESS;
	rc = apiban_kam_check_str(&ip);
	apiban_kam_ip_done(&val);
	return rc;
}

/* apiban_ban(ip[, ttl[, reason]]): ip an address parameter as apiban_check's (but $si is
 * read as text: the core takes text), reason text with variables, ttl an int or a variable; an
 * absent ttl is -1 (the core's ban_ttl), an absent reason none. The core's result as it is: 1
 * queued, -1 dropped, -2 bad address, -3 bad ttl, -4 bad reason (never 0). */
static int fixup_apiban_ban(void **param, int param_no)
{
	if(param_no == 1)
		return apiban_kam_fixup_ip(param, 0);
	return param_no == 2 ? fixup_igp_null(param, 1) : fixup_spve_null(param, 1);
}

static int fixup_free_apiban_ban(void **param, int param_no)
{
	if(param_no == 1)
		return apiban_kam_free_ip(param);
	return param_no == 2 ? fixup_free_igp_null(param, 1) : fixup_free_spve_null(param, 1);
}

static int apiban_kam_ban(sip_msg_t *msg, char *p1, char *p2, char *p3)
{
	pv_value_t val;
	str ip, reason = STR_NULL;
	int ttl = -1, rc;

	if(p2 != NULL && fixup_get_ivalue(msg, (gparam_t *)p2, &ttl) < 0)
		return APIBAN_BAD_TTL;
	if(p3 != NULL && fixup_get_svalue(msg, (gparam_t *)p3, &reason) < 0)
		return APIBAN_BAD_REASON;
	/* The ip last: a variable's value may sit in a getter's or a transformation's static buffer,
	 * which formatting the reason could reuse; the reason is a copy in the core's ring of print
	 * buffers, which reading the ip leaves alone. */
	if(apiban_kam_ip_text(msg, (apiban_kam_ip_t *)p1, &ip, &val) < 0)
		return APIBAN_BAD_ADDRESS;
	rc = apiban_ban(ip.s, (size_t)ip.len, ttl, reason.s, (size_t)reason.len);
	apiban_kam_ip_done(&val);
	return rc;
}

static int w_apiban_ban1(sip_msg_t *msg, char *p1, char *p2)
{
	return apiban_kam_ban(msg, p1, NULL, NULL);
}

static int w_apiban_ban2(sip_msg_t *msg, char *p1, char *p2)
{
	return apiban_kam_ban(msg, p1, p2, NULL);
}

static int w_apiban_ban3(sip_msg_t *msg, char *p1, char *p2, char *p3)
{
	return apiban_kam_ban(msg, p1, p2, p3);
}

/* apiban_unban(ip): the same parameter and results as apiban_ban. */
static int fixup_apiban_unban(void **param, int param_no)
{
	return apiban_kam_fixup_ip(param, 0);
}

static int fixup_free_apiban_unban(void **param, int param_no)
{
	return apiban_kam_free_ip(param);
}

static int w_apiban_unban(sip_msg_t *msg, char *p1, char *p2)
{
	pv_value_t val;
	str ip;
	int rc;

	if(apiban_kam_ip_text(msg, (apiban_kam_ip_t *)p1, &ip, &val) < 0)
		return APIBAN_BAD_ADDRESS;
	rc = apiban_unban(ip.s, (size_t)ip.len);
	apiban_kam_ip_done(&val);
	return rc;
}

cmd_export_t apiban_kam_cmds[] = {
	{"apiban_check", (cmd_function)w_apiban_check0, 0, 0, 0, ANY_ROUTE},
	{"apiban_check", (cmd_function)w_apiban_check1, 1, fixup_apiban_check, fixup_free_apiban_check,
			ANY_ROUTE},
	{"apiban_ban", (cmd_function)w_apiban_ban1, 1, fixup_apiban_ban, fixup_free_apiban_ban, ANY_ROUTE},
	{"apiban_ban", (cmd_function)w_apiban_ban2, 2, fixup_apiban_ban, fixup_free_apiban_ban, ANY_ROUTE},
	{"apiban_ban", (cmd_function)w_apiban_ban3, 3, fixup_apiban_ban, fixup_free_apiban_ban, ANY_ROUTE},
	{"apiban_unban", (cmd_function)w_apiban_unban, 1, fixup_apiban_unban, fixup_free_apiban_unban,
			ANY_ROUTE},
	{0, 0, 0, 0, 0, 0}};

/* ---- KEMI ------------------------------------------------------------------------------ */

static int ki_apiban_check(sip_msg_t *msg)
{
	return apiban_kam_check_src(msg);
}

static int ki_apiban_check_ip(sip_msg_t *msg, str *ip)
{
	return apiban_kam_check_str(ip);
}

/* KEMI has no optional parameters: one name per form of apiban_ban. */
static int ki_apiban_ban(sip_msg_t *msg, str *ip)
{
	return apiban_ban(ip->s, (size_t)ip->len, -1, NULL, 0);
}

static int ki_apiban_ban_ttl(sip_msg_t *msg, str *ip, int ttl)
{
	return apiban_ban(ip->s, (size_t)ip->len, ttl, NULL, 0);
}

static int ki_apiban_ban_reason(sip_msg_t *msg, str *ip, int ttl, str *reason)
{
	return apiban_ban(ip->s, (size_t)ip->len, ttl, reason->s, (size_t)reason->len);
}

static int ki_apiban_unban(sip_msg_t *msg, str *ip)
{
	return apiban_unban(ip->s, (size_t)ip->len);
}

static sr_kemi_t apiban_kam_kemi[] = {
	{str_init("apiban"), str_init("apiban_check"), SR_KEMIP_INT, ki_apiban_check,
		{SR_KEMIP_NONE, SR_KEMIP_NONE, SR_KEMIP_NONE, SR_KEMIP_NONE, SR_KEMIP_NONE, SR_KEMIP_NONE}},
	{str_init("apiban"), str_init("apiban_check_ip"), SR_KEMIP_INT, ki_apiban_check_ip,
		{SR_KEMIP_STR, SR_KEMIP_NONE, SR_KEMIP_NONE, SR_KEMIP_NONE, SR_KEMIP_NONE, SR_KEMIP_NONE}},
	{str_init("apiban"), str_init("apiban_ban"), SR_KEMIP_INT, ki_apiban_ban,
		{SR_KEMIP_STR, SR_KEMIP_NONE, SR_KEMIP_NONE, SR_KEMIP_NONE, SR_KEMIP_NONE, SR_KEMIP_NONE}},
	{str_init("apiban"), str_init("apiban_ban_ttl"), SR_KEMIP_INT, ki_apiban_ban_ttl,
		{SR_KEMIP_STR, SR_KEMIP_INT, SR_KEMIP_NONE, SR_KEMIP_NONE, SR_KEMIP_NONE, SR_KEMIP_NONE}},
	{str_init("apiban"), str_init("apiban_ban_reason"), SR_KEMIP_INT, ki_apiban_ban_reason,
		{SR_KEMIP_STR, SR_KEMIP_INT, SR_KEMIP_STR, SR_KEMIP_NONE, SR_KEMIP_NONE, SR_KEMIP_NONE}},
	{str_init("apiban"), str_init("apiban_unban"), SR_KEMIP_INT, ki_apiban_unban,
		{SR_KEMIP_STR, SR_KEMIP_NONE, SR_KEMIP_NONE, SR_KEMIP_NONE, SR_KEMIP_NONE, SR_KEMIP_NONE}},
	{{0, 0}, {0, 0}, 0, NULL, {0, 0, 0, 0, 0, 0}}};

/* ---- RPC ------------------------------------------------------------------------------- */

static const char *apiban_rpc_stats_doc[] = {"Counters and sync status of the APIBAN table.", 0};
static const char *apiban_rpc_reload_doc[] = {"Pull the full APIBAN list now (the refresher acts within a second).", 0};
static const char *apiban_rpc_check_doc[] = {"Tell whether an address is listed: apiban.check IP.", 0};

/* 'J' keeps integers integers in kamcmd and JSON-RPC output. */
#define APIBAN_RPC_NUMBER(n, doc) rpc->struct_add(th, "J", #n, (unsigned long long)st.n);
#define APIBAN_RPC_TEXT(n, doc) rpc->struct_add(th, "s", #n, st.n);

static void apiban_rpc_stats(rpc_t *rpc, void *ctx)
{
	struct apiban_stats st;
	void *th;

	if(apiban_stats_get(&st) < 0) {
		rpc->fault(ctx, 500, "apiban is not initialised");
		return;
	}
	if(rpc->add(ctx, "{", &th) < 0) {
		rpc->fault(ctx, 500, "cannot create the reply");
		return;
	}
	APIBAN_STATS(APIBAN_RPC_NUMBER, APIBAN_RPC_TEXT)
}

static void apiban_rpc_reload(rpc_t *rpc, void *ctx)
{
	if(apiban_reload() < 0) {
		rpc->fault(ctx, 500, "apiban is not initialised");
		return;
	}
	rpc->rpl_printf(ctx, "Ok. Full pull requested.");
}

static void apiban_rpc_check(rpc_t *rpc, void *ctx)
{
	str ip = STR_NULL;
	struct apiban_verdict v;
	void *th;

	if(rpc->scan(ctx, "S", &ip) < 1) {
		rpc->fault(ctx, 400, "usage: apiban.check IP");
		return;
	}
	if(apiban_admin_check(ip.s, (size_t)ip.len, &v) < 0) {
		rpc->fault(ctx, 500, "apiban is not initialised");
		return;
	}
	if(rpc->add(ctx, "{", &th) < 0) {
		rpc->fault(ctx, 500, "cannot create the reply");
		return;
	}
	rpc->struct_add(th, "Sdss", "ip", &ip, "listed", v.result == APIBAN_LISTED ? 1 : 0,
			"result", v.result_text, "detail", v.detail);
}

/* ---- RPC: local bans ------------------------------------------------------------------- */

static const char *apiban_rpc_ban_doc[] = {"Ban an address here (and on every node, in fleet mode): apiban.ban IP [TTL] [REASON]; TTL in seconds or like 1h, absent or empty: ban_ttl.", 0};
static const char *apiban_rpc_unban_doc[] = {"Lift a local ban, or let an address APIBAN lists through until its listing ends: apiban.unban IP.", 0};
static const char *apiban_rpc_lookup_doc[] = {"Tell whether an address is refused and why (listed, banned, allowed, exempted): apiban.lookup IP.", 0};
static const char *apiban_rpc_bans_doc[] = {"List the local bans and exemptions, newest first: apiban.bans [MAX] (default 100, at most 1000).", 0};

#define APIBAN_RPC_BANS_DEFAULT 100
#define APIBAN_RPC_BANS_MAX 1000

/* A struct apiban_reply as the members of an RPC struct, in its order. */
static void apiban_rpc_fields(rpc_t *rpc, void *th, const struct apiban_reply *r)
{
	int i;

	for(i = 0; i < r->count && i < APIBAN_REPLY_FIELDS; i++) {
		if(r->fields[i].is_number)
			rpc->struct_add(th, "J", r->fields[i].name, (unsigned long long)r->fields[i].number);
		else
			rpc->struct_add(th, "s", r->fields[i].name, r->fields[i].text);
	}
}

/* The reply of apiban.ban, .unban and .lookup: a struct of the core's fields, or its error (a
 * -1 without one: the core is not initialised). The error holds the operator's text: never a
 * format. */
static void apiban_rpc_reply(rpc_t *rpc, void *ctx, int rc, const struct apiban_reply *r)
{
	void *th;

	if(rc < 0) {
		if(r->error[0] != '\0')
			rpc->fault(ctx, 400, "%s", r->error);
		else
			rpc->fault(ctx, 500, "apiban is not initialised");
		return;
	}
	if(rpc->add(ctx, "{", &th) < 0) {
		rpc->fault(ctx, 500, "cannot create the reply");
		return;
	}
	apiban_rpc_fields(rpc, th, r);
}

static void apiban_rpc_ban(rpc_t *rpc, void *ctx)
{
	str ip = STR_NULL, ttl = STR_NULL, reason = STR_NULL, opt;
	struct apiban_reply out;

	if(rpc->scan(ctx, "S", &ip) < 1) {
		rpc->fault(ctx, 400, "usage: apiban.ban IP [TTL] [REASON]");
		return;
	}
	/* Optional ('*'), and a number the client sent as a number arrives as text ('.'). A scan that
	 * finds nothing may still write its target: hence opt. */
	if(rpc->scan(ctx, "*.S", &opt) == 1) {
		ttl = opt;
		if(rpc->scan(ctx, "*.S", &opt) == 1)
			reason = opt;
	}
	out.count = 0;
	out.error[0] = '\0';
	apiban_rpc_reply(rpc, ctx,
			apiban_admin_ban(ip.s, (size_t)ip.len, ttl.s, (size_t)ttl.len, reason.s, (size_t)reason.len, &out),
			&out);
}

static void apiban_rpc_unban(rpc_t *rpc, void *ctx)
{
	str ip = STR_NULL;
	struct apiban_reply out;

	if(rpc->scan(ctx, "S", &ip) < 1) {
		rpc->fault(ctx, 400, "usage: apiban.unban IP");
		return;
	}
	out.count = 0;
	out.error[0] = '\0';
	apiban_rpc_reply(rpc, ctx, apiban_admin_unban(ip.s, (size_t)ip.len, &out), &out);
}

static void apiban_rpc_lookup(rpc_t *rpc, void *ctx)
{
	str ip = STR_NULL;
	struct apiban_reply out;

	if(rpc->scan(ctx, "S", &ip) < 1) {
		rpc->fault(ctx, 400, "usage: apiban.lookup IP");
		return;
	}
	out.count = 0;
	out.error[0] = '\0';
	apiban_rpc_reply(rpc, ctx, apiban_admin_lookup(ip.s, (size_t)ip.len, &out), &out);
}

struct apiban_rpc_list
{
	rpc_t *rpc;
	void *bans; /* the array */
};

static void apiban_rpc_each_ban(void *c, const struct apiban_reply *ban)
{
	struct apiban_rpc_list *l = c;
	void *th;

	if(l->rpc->array_add(l->bans, "{", &th) >= 0)
		apiban_rpc_fields(l->rpc, th, ban);
}

/* { bans: [ {address, kind, made_at, expires, node, reason}, ... ], total } */
static void apiban_rpc_bans(rpc_t *rpc, void *ctx)
{
	struct apiban_rpc_list l;
	int max = APIBAN_RPC_BANS_DEFAULT, opt, total;
	void *th;

	if(rpc->scan(ctx, "*.d", &opt) == 1)
		max = opt;
	if(max < 1) {
		rpc->fault(ctx, 400, "usage: apiban.bans [MAX] (1 to %d)", APIBAN_RPC_BANS_MAX);
		return;
	}
	if(rpc->add(ctx, "{", &th) < 0 || rpc->struct_add(th, "[", "bans", &l.bans) < 0) {
		rpc->fault(ctx, 500, "cannot create the reply");
		return;
	}
	l.rpc = rpc;
	total = apiban_admin_bans(
			(size_t)(max < APIBAN_RPC_BANS_MAX ? max : APIBAN_RPC_BANS_MAX), apiban_rpc_each_ban, &l);
	if(total < 0) {
		rpc->fault(ctx, 500, "apiban is not initialised");
		return;
	}
	rpc->struct_add(th, "J", "total", (unsigned long long)total);
}

rpc_export_t apiban_kam_rpc[] = {
	{"apiban.stats", apiban_rpc_stats, apiban_rpc_stats_doc, 0},
	{"apiban.reload", apiban_rpc_reload, apiban_rpc_reload_doc, 0},
	{"apiban.check", apiban_rpc_check, apiban_rpc_check_doc, 0},
	{"apiban.ban", apiban_rpc_ban, apiban_rpc_ban_doc, 0},
	{"apiban.unban", apiban_rpc_unban, apiban_rpc_unban_doc, 0},
	{"apiban.lookup", apiban_rpc_lookup, apiban_rpc_lookup_doc, 0},
	{"apiban.bans", apiban_rpc_bans, apiban_rpc_bans_doc, 0},
	{0, 0, 0, 0}};

/* ---- statistics ------------------------------------------------------------------------ */

/* Kamailio's counters are per process; ours live in the core's shared mapping (summed there
 * over processes where they are per process). So each number of APIBAN_STATS is registered
 * with a read callback that returns the shared value: `kamcmd stats.get_statistics apiban:`
 * (kex) and xhttp_prom read through counter_get_val(), which calls it. CNT_F_NO_RESET:
 * stats.reset_statistics cannot zero them. */
struct apiban_kam_stat
{
	const char *name;
	size_t offset; /* of a uint64_t field of struct apiban_stats */
	const char *doc;
};

#define APIBAN_KAM_STAT(n, doc) {#n, offsetof(struct apiban_stats, n), doc},
static const struct apiban_kam_stat apiban_kam_stats[] = {
	APIBAN_STATS(APIBAN_KAM_STAT, APIBAN_STAT_NONE)
};

static counter_val_t apiban_kam_stat_get(counter_handle_t h, void *param)
{
	struct apiban_stats st;
	uint64_t v;

	if(apiban_stats_get(&st) < 0)
		return 0;
	memcpy(&v, (const char *)&st + (size_t)param, sizeof(v));
	return (counter_val_t)v;
}

static int apiban_kam_register_stats(void)
{
	size_t i;

	for(i = 0; i < sizeof(apiban_kam_stats) / sizeof(apiban_kam_stats[0]); i++) {
		if(counter_register(NULL, "apiban", apiban_kam_stats[i].name, CNT_F_NO_RESET,
				   apiban_kam_stat_get, (void *)apiban_kam_stats[i].offset,
				   apiban_kam_stats[i].doc, 0)
				< 0) {
			LM_ERR("cannot register the statistic apiban:%s\n", apiban_kam_stats[i].name);
			return -1;
		}
	}
	return 0;
}

/* ---- module life cycle ----------------------------------------------------------------- */

/* Called from Rust's mod_register at load, before any modparam. */
int apiban_kam_register(void)
{
	apiban_set_host(&apiban_kam_host);
	sr_kemi_modules_add(apiban_kam_kemi);
	return 0;
}

int apiban_kam_mod_init(void)
{
	if(apiban_mod_init() < 0)
		return -1;
	/* Counters can be registered until the fork (counters_prefork_init). */
	if(apiban_kam_register_stats() < 0)
		return -1;
	/* Reserve the refresher's process slot, or the core reports "Process limit exceeded". */
	if(register_procs(1) < 0) {
		LM_ERR("cannot register the refresher process\n");
		return -1;
	}
	cfg_register_child(1);
	return 0;
}

int apiban_kam_child_init(int rank)
{
	int pid;

	apiban_child_init(process_no);
	if(rank != PROC_MAIN)
		return 0;
	pid = fork_process(PROC_NOCHLDINIT, "APIBAN REFRESHER", 0);
	if(pid < 0) {
		LM_ERR("cannot fork the refresher process\n");
		return -1;
	}
	if(pid == 0) {
		if(cfg_child_init())
			exit(-1);
		apiban_refresher_main(); /* never returns */
		exit(-1);
	}
	return 0;
}

void apiban_kam_destroy(void)
{
}
