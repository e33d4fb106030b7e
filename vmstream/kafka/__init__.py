"""vmstream's Kafka transport: how records, snapshots and topics live on Kafka.

    client.py    client settings (client_options), the connect error, admin_client
    codec.py     a record as a Kafka message and back (JSON + headers, Parquet spill)
    readers.py   reading records back (read_records, read_results, RecordConsumer)
    producer.py  ReliableProducer: idempotent, acks=all, never drops a record
    topics.py    vmstream's topics: names, specs, ensure / describe / delete
    state.py     KafkaStateStore: stream snapshots on a compacted topic

It knows nothing of the pipeline: the results sink (`vmstream.stages.sinks.kafka`),
the worker (`vmstream.pipeline.worker`) and the `vmstream kafka-topics` command
(`vmstream.cli.kafka_topics`) are built on it. Importing a module connects to
nothing; clients are made (and kafka-python's client classes loaded) when used.
"""
