"""The sampling names the config (`decode.sampling`) and `vmstream run --sampling` accept,
each made a policy by `vmstream.stages.sampling.make_policy`. Apart from that module so
the CLI's parser and the config's checks name them without importing numpy."""

SAMPLING_KINDS = ("fps", "uniform", "tsn", "keyframes", "all")
