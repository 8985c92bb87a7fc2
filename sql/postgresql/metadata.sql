-- The pipeline's bookkeeping tables on postgresql. Generated from pipeline/database/schema.py by `make sql`.

CREATE TABLE pipeline_audits (
	table_name VARCHAR(63) NOT NULL,
	version INTEGER NOT NULL,
	name VARCHAR(255) NOT NULL,
	passed BOOLEAN NOT NULL,
	detail TEXT NOT NULL,
	checked_at TIMESTAMP WITH TIME ZONE NOT NULL,
	PRIMARY KEY (table_name, version, name)
);

CREATE TABLE pipeline_flips (
	id SERIAL NOT NULL,
	table_name VARCHAR(63) NOT NULL,
	alias VARCHAR(63) DEFAULT 'champion' NOT NULL,
	from_version INTEGER,
	to_version INTEGER NOT NULL,
	flipped_at TIMESTAMP WITH TIME ZONE NOT NULL,
	reason TEXT NOT NULL,
	actor TEXT,
	PRIMARY KEY (id)
);

CREATE INDEX pipeline_flips_table ON pipeline_flips (table_name, alias, id);

CREATE TABLE pipeline_grants (
	table_name VARCHAR(63) NOT NULL,
	role VARCHAR(63) NOT NULL,
	PRIMARY KEY (table_name, role)
);

CREATE TABLE pipeline_partitions (
	table_name VARCHAR(63) NOT NULL,
	version INTEGER NOT NULL,
	partition INTEGER NOT NULL,
	partitions INTEGER NOT NULL,
	row_count BIGINT NOT NULL,
	expected_rows BIGINT NOT NULL,
	digest TEXT NOT NULL,
	worker TEXT,
	seconds FLOAT NOT NULL,
	finished_at TIMESTAMP WITH TIME ZONE NOT NULL,
	PRIMARY KEY (table_name, version, partition)
);

CREATE TABLE pipeline_pointer (
	table_name VARCHAR(63) NOT NULL,
	alias VARCHAR(63) DEFAULT 'champion' NOT NULL,
	version INTEGER NOT NULL,
	view_versions TEXT NOT NULL,
	updated_at TIMESTAMP WITH TIME ZONE NOT NULL,
	PRIMARY KEY (table_name, alias)
);

CREATE TABLE pipeline_runs (
	id SERIAL NOT NULL,
	job VARCHAR(255) NOT NULL,
	table_name VARCHAR(63) NOT NULL,
	logical_date DATE NOT NULL,
	trigger VARCHAR(16) NOT NULL,
	scheduled_for TIMESTAMP WITH TIME ZONE,
	status VARCHAR(16) NOT NULL,
	version INTEGER,
	started_at TIMESTAMP WITH TIME ZONE NOT NULL,
	finished_at TIMESTAMP WITH TIME ZONE,
	error TEXT,
	host TEXT,
	pid INTEGER,
	gates TEXT,
	retries TEXT,
	PRIMARY KEY (id),
	CONSTRAINT pipeline_runs_status CHECK (status IN ('running', 'succeeded', 'failed', 'skipped'))
);

CREATE INDEX pipeline_runs_job ON pipeline_runs (job, id);

CREATE UNIQUE INDEX pipeline_runs_tick ON pipeline_runs (job, scheduled_for);

CREATE TABLE pipeline_splits (
	table_name VARCHAR(63) NOT NULL,
	alias VARCHAR(63) NOT NULL,
	percent INTEGER NOT NULL,
	updated_at TIMESTAMP WITH TIME ZONE NOT NULL,
	PRIMARY KEY (table_name)
);

CREATE TABLE pipeline_versions (
	table_name VARCHAR(63) NOT NULL,
	version INTEGER NOT NULL,
	job VARCHAR(255) NOT NULL,
	logical_date DATE,
	status VARCHAR(16) NOT NULL,
	keys TEXT NOT NULL,
	columns TEXT,
	row_count BIGINT,
	domain_size BIGINT,
	domain_fingerprint VARCHAR(64),
	model_path TEXT NOT NULL,
	model_sha256 VARCHAR(64) NOT NULL,
	model_class TEXT,
	model_source TEXT,
	model_library TEXT,
	input_schema TEXT,
	type_changes TEXT,
	output_labels TEXT,
	settings_sha256 VARCHAR(64),
	input_profile TEXT,
	passthrough TEXT,
	watermark TIMESTAMP WITH TIME ZONE,
	top_ups INTEGER,
	lineage INTEGER,
	started_at TIMESTAMP WITH TIME ZONE NOT NULL,
	finished_at TIMESTAMP WITH TIME ZONE,
	error TEXT,
	PRIMARY KEY (table_name, version),
	CONSTRAINT pipeline_versions_status CHECK (status IN ('building', 'ready', 'failed', 'retired'))
);
