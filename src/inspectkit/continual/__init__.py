"""inspectkit.continual"""
