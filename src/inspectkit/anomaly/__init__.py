"""inspectkit.anomaly"""
