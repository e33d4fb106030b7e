"""Config, the runner that wires stages with bounded queues, the Kafka worker, the CLI."""
