-- edgekit programme records, server schema 1: every station's screening sessions in one database.
-- Rows are keyed on (station_id, local_id): the station's UUID (generated once, kept in its SQLite
-- file) and the row's id there, so no two stations can collide and a re-sent row is recognised.
-- Every row also keeps who sent it (the login role) and when the server received it.
--
-- Roles (group roles, NOLOGIN; give each station its own LOGIN role IN ROLE edgekit_station):
--   edgekit_station: inserts rows of the station ids registered to its own login role, reads
--                    those back (to know what the server has), and nothing of other stations;
--   edgekit_reader:  reads everything (the programme report).

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'edgekit_station') THEN
        CREATE ROLE edgekit_station NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'edgekit_reader') THEN
        CREATE ROLE edgekit_reader NOLOGIN;
    END IF;
END
$$;

CREATE TABLE stations (
    station_id uuid PRIMARY KEY,
    role name NOT NULL DEFAULT session_user,
    registered_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sessions (
    station_id uuid NOT NULL REFERENCES stations (station_id),
    local_id bigint NOT NULL,
    patient text NOT NULL,
    site text,
    operator text,
    model_sha256 text NOT NULL,
    model_format text,
    bundle text,
    decision text,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL,
    manifest_sha256 text NOT NULL DEFAULT '',
    signer_key_id text,
    trust text,
    guard text,
    sent_by name NOT NULL DEFAULT session_user,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (station_id, local_id)
);
CREATE INDEX sessions_created ON sessions (created_at);

CREATE TABLE records (
    station_id uuid NOT NULL,
    local_id bigint NOT NULL,
    session_id bigint NOT NULL,
    source_id text NOT NULL,
    source_kind text NOT NULL,
    content_hash text NOT NULL,
    status text NOT NULL,
    reason text,
    label text,
    probability double precision,
    p_positive double precision,
    decision text,
    probabilities text,
    domain_score double precision,
    model_sha256 text NOT NULL,
    created_at double precision NOT NULL,
    sent_by name NOT NULL DEFAULT session_user,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (station_id, local_id),
    FOREIGN KEY (station_id, session_id) REFERENCES sessions (station_id, local_id)
);
CREATE INDEX records_session ON records (station_id, session_id);

-- a kept crop stays on the station (its PNG is in the station's crop_images); the server keeps the
-- reference: which record, the PNG's sha256 and size
CREATE TABLE crop_refs (
    station_id uuid NOT NULL,
    record_id bigint NOT NULL,
    png_sha256 text NOT NULL,
    png_bytes integer NOT NULL,
    sent_by name NOT NULL DEFAULT session_user,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (station_id, record_id),
    FOREIGN KEY (station_id, record_id) REFERENCES records (station_id, local_id)
);

-- a later verdict on a cell replaces an earlier one (as on the station)
CREATE TABLE reviews (
    station_id uuid NOT NULL,
    record_id bigint NOT NULL,
    verdict text NOT NULL CHECK (verdict IN ('parasitized', 'not parasitized')),
    reviewer text,
    note text,
    created_at double precision NOT NULL,
    sent_by name NOT NULL DEFAULT session_user,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (station_id, record_id),
    FOREIGN KEY (station_id, record_id) REFERENCES records (station_id, local_id)
);

-- one row per completed sync: who sent how much, and when
CREATE TABLE syncs (
    id bigserial PRIMARY KEY,
    station_id uuid NOT NULL REFERENCES stations (station_id),
    started_at timestamptz NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT now(),
    sent integer NOT NULL,
    already integer NOT NULL,
    sent_by name NOT NULL DEFAULT session_user
);

-- who sent a row and when is the server's to say, never the sender's
CREATE FUNCTION edgekit_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.sent_by := session_user;
    NEW.received_at := now();
    RETURN NEW;
END
$$;
CREATE FUNCTION edgekit_stamp_sync() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.sent_by := session_user;
    NEW.finished_at := now();
    RETURN NEW;
END
$$;
CREATE FUNCTION edgekit_stamp_station() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.registered_at := now();
    RETURN NEW;
END
$$;
CREATE TRIGGER stamp BEFORE INSERT OR UPDATE ON sessions FOR EACH ROW EXECUTE FUNCTION edgekit_stamp();
CREATE TRIGGER stamp BEFORE INSERT ON records FOR EACH ROW EXECUTE FUNCTION edgekit_stamp();
CREATE TRIGGER stamp BEFORE INSERT ON crop_refs FOR EACH ROW EXECUTE FUNCTION edgekit_stamp();
CREATE TRIGGER stamp BEFORE INSERT OR UPDATE ON reviews FOR EACH ROW EXECUTE FUNCTION edgekit_stamp();
CREATE TRIGGER stamp BEFORE INSERT ON syncs FOR EACH ROW EXECUTE FUNCTION edgekit_stamp_sync();
CREATE TRIGGER stamp BEFORE INSERT ON stations FOR EACH ROW EXECUTE FUNCTION edgekit_stamp_station();

-- row-level security: a station role sees and writes only the station ids registered to it
ALTER TABLE stations ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_station ON stations TO edgekit_station
    USING (role = session_user) WITH CHECK (role = session_user);
CREATE POLICY read_all ON stations FOR SELECT TO edgekit_reader USING (true);

CREATE FUNCTION edgekit_owns(uuid) RETURNS boolean LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT 1 FROM public.stations s WHERE s.station_id = $1 AND s.role = session_user)
$$;
REVOKE ALL ON FUNCTION edgekit_owns(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION edgekit_owns(uuid) TO edgekit_station;

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['sessions', 'records', 'crop_refs', 'reviews', 'syncs'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY own_rows ON %I TO edgekit_station'
                       ' USING (edgekit_owns(station_id)) WITH CHECK (edgekit_owns(station_id))', t);
        EXECUTE format('CREATE POLICY read_all ON %I FOR SELECT TO edgekit_reader USING (true)', t);
    END LOOP;
END
$$;

REVOKE ALL ON stations, sessions, records, crop_refs, reviews, syncs FROM PUBLIC;
GRANT SELECT, INSERT ON stations, records, crop_refs, syncs TO edgekit_station;
GRANT SELECT, INSERT, UPDATE ON sessions, reviews TO edgekit_station;
GRANT USAGE ON SEQUENCE syncs_id_seq TO edgekit_station;
GRANT SELECT ON stations, sessions, records, crop_refs, reviews, syncs TO edgekit_reader;
GRANT SELECT ON schema_version TO edgekit_station, edgekit_reader;
