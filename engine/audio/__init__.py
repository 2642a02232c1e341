"""Audio: the log-Mel definition, WAV I/O, datasets (FSDD, Speech Commands / SC09) and vocoders."""
