-- Opening of every upgrade script: the same fixed search_path as the install script.
SET LOCAL search_path = pg_catalog, pg_temp;
