"""Measurement: generated-speech quality (recognised fraction, Frechet distance), the cost of a score
evaluation (parameters, MACs, time, memory), and the provenance every results file records."""
