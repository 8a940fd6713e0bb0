-- Install guard: refuses to install into a `cep` schema that someone else controls.
-- CREATE EXTENSION reuses an existing schema of the control file's name; a schema owned by
-- another role, or writable by others, could hold planted objects, so installation stops.
-- The whole script runs with a fixed search_path; every object it creates is qualified.
SET LOCAL search_path = pg_catalog, pg_temp;

DO $guard$
DECLARE
    v_owner oid;
    v_writers text;
BEGIN
    SELECT n.nspowner INTO v_owner
    FROM pg_catalog.pg_namespace AS n
    WHERE n.nspname OPERATOR(pg_catalog.=) 'cep';

    IF v_owner IS NOT NULL AND v_owner OPERATOR(pg_catalog.<>) (
        SELECT r.oid FROM pg_catalog.pg_roles AS r WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER
    ) THEN
        RAISE EXCEPTION 'schema "cep" already exists and is owned by role "%"',
            pg_catalog.pg_get_userbyid(v_owner)
            USING ERRCODE = '42501',
            HINT = 'Drop or rename that schema, or install pg_cep as its owner.';
    END IF;

    SELECT pg_catalog.string_agg(
        CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE pg_catalog.pg_get_userbyid(a.grantee) END, ', ')
    INTO v_writers
    FROM pg_catalog.pg_namespace AS n,
        LATERAL pg_catalog.aclexplode(n.nspacl) AS a
    WHERE n.nspname OPERATOR(pg_catalog.=) 'cep'
        AND a.privilege_type OPERATOR(pg_catalog.=) 'CREATE'
        AND a.grantee OPERATOR(pg_catalog.<>) n.nspowner;

    IF v_writers IS NOT NULL THEN
        RAISE EXCEPTION 'schema "cep" already exists and is writable by %', v_writers
            USING ERRCODE = '42501',
            HINT = 'Revoke CREATE on schema cep from other roles before installing pg_cep.';
    END IF;
END
$guard$;
