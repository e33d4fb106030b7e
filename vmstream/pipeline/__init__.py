"""The pipeline: config, assembly, the stream plan, the threaded runner and its sequential twin, checkpoints, progress and signals, the Kafka worker."""
