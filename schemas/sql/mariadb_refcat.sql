-- Reference catalogs on the MariaDB shards (broker/storage/refcat.py reads this file).
--
-- Each section starts with a line "-- @<name>" and is one statement. Placeholders in braces are
-- filled from validated identifiers only: {table} (rc_<name>_v<k>, _overlap, _director),
-- {id_type} (BIGINT or VARCHAR(191)) and {data_columns} (", `col` TYPE NULL" for each column).
--
-- The data tables are MyISAM, as Qserv's chunk tables are: written once by a bulk load and then
-- only read, they need no transactions (a reload is made atomic by the registry flip, not by
-- InnoDB), and LOAD DATA into MyISAM with keys disabled is several times faster.

-- @registry
-- On shard 0 only: which version of each catalog is current. A load writes version k+1 in full,
-- then flips this row in one statement; readers resolve the version here first.
CREATE TABLE IF NOT EXISTS refcat_registry (
    name VARCHAR(31) NOT NULL PRIMARY KEY,
    version INT NOT NULL,
    `rows` BIGINT NOT NULL,
    `columns` JSON NOT NULL,
    overlap_deg DOUBLE NOT NULL,
    loaded_at DATETIME(6) NOT NULL,
    status VARCHAR(16) NOT NULL
) ENGINE=InnoDB;

-- @main
-- The rows of a catalog placed on the shard of their chunk.
CREATE TABLE {table} (
    chunk_id INT NOT NULL,
    hpx29 BIGINT NOT NULL,
    id {id_type} NOT NULL,
    ra DOUBLE NOT NULL,
    `dec` DOUBLE NOT NULL{data_columns},
    PRIMARY KEY (id),
    KEY chunk_hpx29 (chunk_id, hpx29)
) ENGINE=MyISAM DEFAULT CHARSET=utf8mb4;

-- @overlap
-- Halo rows: a row of a neighbouring chunk within the overlap radius, on the halo chunk's shard.
CREATE TABLE {table} (
    chunk_id INT NOT NULL,
    id {id_type} NOT NULL,
    hpx29 BIGINT NOT NULL,
    ra DOUBLE NOT NULL,
    `dec` DOUBLE NOT NULL,
    PRIMARY KEY (chunk_id, id)
) ENGINE=MyISAM DEFAULT CHARSET=utf8mb4;

-- @director
-- Director index id -> chunk_id, on shard crc32(str(id)) % shards.
CREATE TABLE {table} (
    id {id_type} NOT NULL,
    chunk_id INT NOT NULL,
    PRIMARY KEY (id)
) ENGINE=MyISAM DEFAULT CHARSET=utf8mb4;
