-- Every search scans the whole pending list of the trigram index (the entries of rows written since its last
-- cleanup, kept unsorted until then) before the index proper. Filled by the projection to the default 4 MB, it
-- doubled the cost of a selective search. At 256 kB, writes still reach the index in batches and the scan stays
-- short. Applied to the active table, whatever its version; a rebuild copies the setting with the index.
DO $$
DECLARE
    trgm regclass;
BEGIN
    SELECT i.indexrelid::regclass INTO trgm
    FROM read_model_tables m
    JOIN pg_index i ON i.indrelid = to_regclass(m.active_table)
    JOIN pg_class c ON c.oid = i.indexrelid
    JOIN pg_am a ON a.oid = c.relam
    WHERE m.name = 'users' AND a.amname = 'gin';
    IF trgm IS NOT NULL THEN
        EXECUTE format('ALTER INDEX %s SET (gin_pending_list_limit = 256)', trgm);
        PERFORM gin_clean_pending_list(trgm);
    END IF;
END $$;
