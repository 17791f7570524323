"""inspectkit.xai"""
