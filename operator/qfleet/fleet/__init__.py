"""Pure fleet planning: demand, replicas, gate decisions, names. Imports neither kopf nor kubernetes."""
