"""`make up`: the serving path on one machine, from the same rendered configs a cluster would get."""
