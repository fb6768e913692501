"""The NCSN application built on fastscore's kernel library: score networks (models), training,
configs, data, metrics, the toy mixture, the demo and the command line. It imports the library
(fastscore.ops, fastscore.nn, fastscore.sampling, ...); the library never imports it."""
