"""An OID-free, sorted snapshot of everything in one schema's catalog, to compare installs.

catalog_snapshot(conn) captures schema `cep` as a plain dict: relations with their columns,
constraints, indexes, triggers, policies, rules and view definitions; sequences; functions;
types; any other schema objects; comments and ACLs everywhere; and the rows of cep.settings.
Role names equal to the schema owner are replaced by "<owner>", so installs made by different
roles compare equal. diff_snapshots(a, b) lists the differences as readable lines.
"""

from __future__ import annotations

import difflib
from typing import Any

import psycopg

OWNER = "<owner>"


def _role(name: str | None, owner: str) -> str | None:
    if name is None:
        return None
    bare = name[1:-1].replace('""', '"') if name.startswith('"') else name
    return OWNER if bare == owner else name


def _acl(items: list[str] | None, owner: str) -> list[str] | None:
    """aclitem texts `grantee=privileges/grantor` with the owner's name normalised."""
    if items is None:
        return None
    out = []
    for item in items:
        grantee, _, rest = item.partition("=")
        privileges, _, grantor = rest.rpartition("/")
        grantee_text = _role(grantee, owner) if grantee else "PUBLIC"
        out.append(f"{grantee_text}={privileges}/{_role(grantor, owner)}")
    return sorted(out)


def _rows(conn: psycopg.Connection, query: str, *params: Any) -> list[tuple]:
    return conn.execute(query, params).fetchall()


def catalog_snapshot(conn: psycopg.Connection, schema: str = "cep") -> dict[str, Any]:
    row = conn.execute(
        "SELECT n.oid, pg_catalog.pg_get_userbyid(n.nspowner), n.nspacl::pg_catalog.text[],"
        " pg_catalog.obj_description(n.oid, 'pg_namespace')"
        " FROM pg_catalog.pg_namespace AS n WHERE n.nspname = %s", (schema,)).fetchone()
    if row is None:
        return {"schema": None}
    nsp, owner, nspacl, comment = row
    return {
        "schema": {"name": schema, "acl": _acl(nspacl, owner), "comment": comment},
        "relations": _relations(conn, nsp, owner),
        "functions": _functions(conn, nsp, owner),
        "types": _types(conn, nsp, owner),
        "other_objects": _other_objects(conn, nsp),
        "rows": _table_rows(conn, nsp, schema),
    }


def _relations(conn: psycopg.Connection, nsp: int, owner: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for (oid, name, kind, persistence, options, relowner, relacl, comment, rls, force_rls,
         viewdef) in _rows(conn, """
        SELECT c.oid, c.relname, c.relkind::text, c.relpersistence::text, c.reloptions,
               pg_catalog.pg_get_userbyid(c.relowner), c.relacl::pg_catalog.text[],
               pg_catalog.obj_description(c.oid, 'pg_class'), c.relrowsecurity,
               c.relforcerowsecurity,
               CASE WHEN c.relkind IN ('v', 'm') THEN pg_catalog.pg_get_viewdef(c.oid, true) END
        FROM pg_catalog.pg_class AS c
        WHERE c.relnamespace = %s AND c.relkind NOT IN ('i', 'I', 'c')
        ORDER BY c.relname""", nsp):
        rel: dict[str, Any] = {
            "kind": kind, "persistence": persistence, "options": sorted(options or []),
            "owner": _role(relowner, owner), "acl": _acl(relacl, owner), "comment": comment,
            "row_security": [rls, force_rls],
        }
        if viewdef is not None:
            rel["view"] = viewdef
        if kind == "S":
            rel["sequence"] = _sequence(conn, oid)
        else:
            rel.update(_columns(conn, oid, owner))
            rel["constraints"] = {
                n: {"def": d, "comment": c} for n, d, c in _rows(conn, """
                SELECT k.conname, pg_catalog.pg_get_constraintdef(k.oid, true),
                       pg_catalog.obj_description(k.oid, 'pg_constraint')
                FROM pg_catalog.pg_constraint AS k WHERE k.conrelid = %s""", oid)}
            rel["indexes"] = {
                n: {"def": d, "comment": c} for n, d, c in _rows(conn, """
                SELECT i.relname, pg_catalog.pg_get_indexdef(x.indexrelid),
                       pg_catalog.obj_description(i.oid, 'pg_class')
                FROM pg_catalog.pg_index AS x
                JOIN pg_catalog.pg_class AS i ON i.oid = x.indexrelid
                WHERE x.indrelid = %s""", oid)}
            rel["triggers"] = {
                n: {"def": d, "enabled": e, "comment": c} for n, d, e, c in _rows(conn, """
                SELECT t.tgname, pg_catalog.pg_get_triggerdef(t.oid, true), t.tgenabled::text,
                       pg_catalog.obj_description(t.oid, 'pg_trigger')
                FROM pg_catalog.pg_trigger AS t
                WHERE t.tgrelid = %s AND NOT t.tgisinternal""", oid)}
            rel["policies"] = {
                n: {"cmd": cmd, "permissive": perm,
                    "roles": sorted(_role(r, owner) or "" for r in roles),
                    "using": qual, "check": check, "comment": c}
                for n, cmd, perm, roles, qual, check, c in _rows(conn, """
                SELECT p.polname, p.polcmd::text, p.polpermissive,
                       ARRAY(SELECT CASE r WHEN 0 THEN 'PUBLIC'
                                    ELSE pg_catalog.pg_get_userbyid(r) END
                             FROM pg_catalog.unnest(p.polroles) AS r),
                       pg_catalog.pg_get_expr(p.polqual, p.polrelid),
                       pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid),
                       pg_catalog.obj_description(p.oid, 'pg_policy')
                FROM pg_catalog.pg_policy AS p WHERE p.polrelid = %s""", oid)}
            rel["rules"] = {
                n: d for n, d in _rows(conn, """
                SELECT r.rulename, pg_catalog.pg_get_ruledef(r.oid, true)
                FROM pg_catalog.pg_rewrite AS r
                WHERE r.ev_class = %s AND r.rulename <> '_RETURN'""", oid)}
        out[name] = rel
    return out


def _columns(conn: psycopg.Connection, relid: int, owner: str) -> dict[str, Any]:
    columns: dict[str, Any] = {}
    for (name, typ, notnull, default, identity, generated, collation, storage, compression,
         attacl, comment) in _rows(conn, """
        SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_catalog.pg_get_expr(d.adbin, d.adrelid), a.attidentity::text,
               a.attgenerated::text,
               CASE WHEN a.attcollation <> t.typcollation THEN
                   (SELECT co.collname FROM pg_catalog.pg_collation AS co
                    WHERE co.oid = a.attcollation) END,
               a.attstorage::text, a.attcompression::text, a.attacl::pg_catalog.text[],
               pg_catalog.col_description(a.attrelid, a.attnum)
        FROM pg_catalog.pg_attribute AS a
        JOIN pg_catalog.pg_type AS t ON t.oid = a.atttypid
        LEFT JOIN pg_catalog.pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum""", relid):
        columns[name] = {
            "type": typ, "not_null": notnull, "default": default, "identity": identity,
            "generated": generated, "collation": collation, "storage": storage,
            "compression": compression, "acl": _acl(attacl, owner), "comment": comment,
        }
    # Order matters (SELECT *, INSERT without a column list) but is kept apart so that one
    # moved column reads as one difference.
    return {"column_order": list(columns), "columns": columns}


def _sequence(conn: psycopg.Connection, relid: int) -> dict[str, Any]:
    typ, start, inc, smax, smin, cache, cycle, owned_by = conn.execute("""
        SELECT pg_catalog.format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, s.seqmax,
               s.seqmin, s.seqcache, s.seqcycle,
               (SELECT pg_catalog.concat(c.relname, '.', a.attname, ' ', d.deptype)
                FROM pg_catalog.pg_depend AS d
                JOIN pg_catalog.pg_class AS c ON c.oid = d.refobjid
                JOIN pg_catalog.pg_attribute AS a
                  ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                  AND d.objid = s.seqrelid
                  AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
                  AND d.deptype IN ('a', 'i'))
        FROM pg_catalog.pg_sequence AS s WHERE s.seqrelid = %s""", (relid,)).fetchone()
    return {"type": typ, "start": start, "increment": inc, "max": smax, "min": smin,
            "cache": cache, "cycle": cycle, "owned_by": owned_by}


def _functions(conn: psycopg.Connection, nsp: int, owner: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for (name, ident, args, result, kind, lang, volatile, strict, secdef, leakproof, parallel,
         cost, rows, config, src, binary, support, proowner, proacl, comment,
         aggregate) in _rows(conn, """
        SELECT p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid),
               pg_catalog.pg_get_function_arguments(p.oid),
               pg_catalog.pg_get_function_result(p.oid), p.prokind::text, l.lanname,
               p.provolatile::text, p.proisstrict, p.prosecdef, p.proleakproof,
               p.proparallel::text, p.procost::float8, p.prorows::float8, p.proconfig,
               p.prosrc, p.probin, p.prosupport::text, pg_catalog.pg_get_userbyid(p.proowner),
               p.proacl::pg_catalog.text[], pg_catalog.obj_description(p.oid, 'pg_proc'),
               (SELECT pg_catalog.concat_ws(' ', g.aggkind, g.aggtransfn, g.aggfinalfn,
                       g.aggcombinefn, pg_catalog.format_type(g.aggtranstype, NULL),
                       g.agginitval, g.aggsortop::pg_catalog.regoperator)
                FROM pg_catalog.pg_aggregate AS g WHERE g.aggfnoid = p.oid)
        FROM pg_catalog.pg_proc AS p
        JOIN pg_catalog.pg_language AS l ON l.oid = p.prolang
        WHERE p.pronamespace = %s""", nsp):
        out[f"{name}({ident})"] = {
            "kind": kind, "arguments": args, "result": result, "language": lang,
            "volatility": volatile, "strict": strict, "security_definer": secdef,
            "leakproof": leakproof, "parallel": parallel, "cost": cost, "rows": rows,
            "config": config, "source": src, "binary": binary, "support": support,
            "owner": _role(proowner, owner), "acl": _acl(proacl, owner), "comment": comment,
            "aggregate": aggregate,
        }
    return dict(sorted(out.items()))


def _types(conn: psycopg.Connection, nsp: int, owner: str) -> dict[str, Any]:
    """Types defined on their own: composites, enums, domains, ranges, base and shell types
    (not the row types of tables and views, nor the implicit array types)."""
    out: dict[str, Any] = {}
    for oid, name, typtype, relid, base, notnull, default, typowner, typacl, comment in _rows(
            conn, """
        SELECT t.oid, t.typname, t.typtype::text, t.typrelid,
               CASE WHEN t.typtype = 'd' THEN pg_catalog.format_type(t.typbasetype, t.typtypmod)
                    WHEN t.typtype = 'r' THEN
                        (SELECT pg_catalog.format_type(r.rngsubtype, NULL)
                         FROM pg_catalog.pg_range AS r WHERE r.rngtypid = t.oid) END,
               t.typnotnull, t.typdefault, pg_catalog.pg_get_userbyid(t.typowner),
               t.typacl::pg_catalog.text[], pg_catalog.obj_description(t.oid, 'pg_type')
        FROM pg_catalog.pg_type AS t
        WHERE t.typnamespace = %s
          AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type AS e WHERE e.typarray = t.oid)
          AND (t.typrelid = 0 OR (SELECT c.relkind FROM pg_catalog.pg_class AS c
                                  WHERE c.oid = t.typrelid) = 'c')
        ORDER BY t.typname""", nsp):
        entry: dict[str, Any] = {
            "kind": typtype, "owner": _role(typowner, owner), "acl": _acl(typacl, owner),
            "comment": comment,
        }
        if typtype == "c":
            entry.update(_columns(conn, relid, owner))
        elif typtype == "e":
            entry["labels"] = [r[0] for r in _rows(conn, """
                SELECT e.enumlabel FROM pg_catalog.pg_enum AS e WHERE e.enumtypid = %s
                ORDER BY e.enumsortorder""", oid)]
        elif typtype in ("d", "r"):
            entry.update(base=base, not_null=notnull, default=default)
            entry["constraints"] = {n: d for n, d in _rows(conn, """
                SELECT k.conname, pg_catalog.pg_get_constraintdef(k.oid, true)
                FROM pg_catalog.pg_constraint AS k WHERE k.contypid = %s""", oid)}
        out[name] = entry
    return out


def _other_objects(conn: psycopg.Connection, nsp: int) -> list[str]:
    """Identity and comment of every other kind of object the schema can hold."""
    catalogs = {
        "pg_operator": "oprnamespace", "pg_opclass": "opcnamespace",
        "pg_opfamily": "opfnamespace", "pg_collation": "collnamespace",
        "pg_conversion": "connamespace", "pg_statistic_ext": "stxnamespace",
        "pg_ts_config": "cfgnamespace", "pg_ts_dict": "dictnamespace",
        "pg_ts_parser": "prsnamespace", "pg_ts_template": "tmplnamespace",
    }
    found: list[str] = []
    for catalog, column in catalogs.items():
        found += [f"{kind} {ident}: {comment}" for kind, ident, comment in _rows(conn, f"""
            SELECT o.type, o.identity, pg_catalog.obj_description(x.oid, '{catalog}')
            FROM pg_catalog.{catalog} AS x,
                 pg_catalog.pg_identify_object('pg_catalog.{catalog}'::pg_catalog.regclass,
                                               x.oid, 0) AS o
            WHERE x.{column} = %s""", nsp)]
    return sorted(found)


def _table_rows(conn: psycopg.Connection, nsp: int, schema: str) -> dict[str, Any]:
    """The rows of cep.settings: installs and upgrades must leave it empty."""
    out: dict[str, Any] = {}
    for (name,) in _rows(conn, """
        SELECT c.relname FROM pg_catalog.pg_class AS c
        WHERE c.relnamespace = %s AND c.relname = 'settings' AND c.relkind = 'r'""", nsp):
        rows = conn.execute(
            f'SELECT pg_catalog.to_jsonb(t)::pg_catalog.text FROM "{schema}"."{name}" AS t'
        ).fetchall()
        out[name] = sorted(r[0] for r in rows)
    return out


# -- comparison ----------------------------------------------------------------------------

def _flatten(value: Any, path: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for key in sorted(value):
            _flatten(value[key], f"{path}.{key}" if path else str(key), out)
    else:
        out[path] = value


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 300 else text[:300] + "..."


def diff_snapshots(a: dict[str, Any], b: dict[str, Any],
                   names: tuple[str, str] = ("a", "b")) -> list[str]:
    """Readable differences between two snapshots; empty when they are equal."""
    fa: dict[str, Any] = {}
    fb: dict[str, Any] = {}
    _flatten(a, "", fa)
    _flatten(b, "", fb)
    lines: list[str] = []
    for key in sorted(set(fa) | set(fb)):
        if key not in fb:
            lines.append(f"only in {names[0]}: {key} = {_show(fa[key])}")
        elif key not in fa:
            lines.append(f"only in {names[1]}: {key} = {_show(fb[key])}")
        elif fa[key] != fb[key]:
            va, vb = fa[key], fb[key]
            if isinstance(va, str) and isinstance(vb, str) and ("\n" in va or "\n" in vb):
                body = "\n".join(difflib.unified_diff(
                    va.splitlines(), vb.splitlines(), names[0], names[1], lineterm="", n=1))
                lines.append(f"{key} differs:\n{body}")
            else:
                lines.append(f"{key}: {names[0]}={_show(va)} {names[1]}={_show(vb)}")
    return lines
