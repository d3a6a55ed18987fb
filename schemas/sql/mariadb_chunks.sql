-- Lanner's chunked tables on every MariaDB shard. Rows are spread over the shards by the chunk
-- placement map (broker/domain/sky.py ChunkPlacement): an object and all its alert rows live on
-- the shard of the object's chunk. Every positional row carries its Qserv-style chunk id and
-- its HEALPix nested order-29 index (hpx29) under a B-tree, so a cone is a few chunk-and-range
-- scans plus an exact distance filter.
-- {band_columns} is filled in by broker/storage/mariadb.py with the per-band columns.

CREATE TABLE IF NOT EXISTS objects (
    object_id VARCHAR(32) NOT NULL,
    survey VARCHAR(8) NOT NULL,
    chunk_id INT NOT NULL,
    hpx29 BIGINT NOT NULL,
    ra DOUBLE NOT NULL,
    `dec` DOUBLE NOT NULL,
    first_mjd DOUBLE NULL,
    last_mjd DOUBLE NULL,
    n_detections INT NOT NULL DEFAULT 0,
    last_forced_mjd DOUBLE NULL,
    {band_columns},
    PRIMARY KEY (object_id),
    KEY idx_objects_sky (chunk_id, hpx29)
) ENGINE=InnoDB;

-- One row per detection (Rubin diaSource, ZTF candidate), co-located with its object's chunk.
CREATE TABLE IF NOT EXISTS alert_rows (
    source_id BIGINT NOT NULL,
    object_id VARCHAR(32) NOT NULL,
    survey VARCHAR(8) NOT NULL,
    chunk_id INT NOT NULL,
    hpx29 BIGINT NOT NULL,
    mjd DOUBLE NOT NULL,
    ra DOUBLE NOT NULL,
    `dec` DOUBLE NOT NULL,
    band CHAR(1) NOT NULL,
    psf_flux DOUBLE NULL,
    psf_flux_err DOUBLE NULL,
    science_flux DOUBLE NULL,
    science_flux_err DOUBLE NULL,
    snr DOUBLE NULL,
    reliability DOUBLE NULL,
    PRIMARY KEY (source_id),
    KEY idx_alert_rows_object (object_id, mjd),
    KEY idx_alert_rows_sky (chunk_id, hpx29)
) ENGINE=InnoDB;

-- Director index: object id -> chunk. Rows are spread over the shards by a hash of the object
-- id (not by chunk), so an id lookup is one query to one shard, then one to the chunk's shard.
-- It also keeps the time of the newest stored detection and forced measurement of the object,
-- which is what ingest needs to skip the history every packet repeats.
CREATE TABLE IF NOT EXISTS director (
    object_id VARCHAR(32) NOT NULL,
    chunk_id INT NOT NULL,
    last_detection_mjd DOUBLE NULL,
    last_forced_mjd DOUBLE NULL,
    PRIMARY KEY (object_id)
) ENGINE=InnoDB;

-- How this archive is laid out, recorded by the first setup and checked by every later one:
-- chunking parameters, shard count, placement rule and this shard's index.
CREATE TABLE IF NOT EXISTS layout (
    name VARCHAR(32) NOT NULL,
    value VARCHAR(64) NOT NULL,
    PRIMARY KEY (name)
) ENGINE=InnoDB;
