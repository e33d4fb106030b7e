"""The pipeline: config, assembly, the stream plan, the threaded runner and its sequential twin, the snapshot keeper, progress and signals, the Kafka worker."""
