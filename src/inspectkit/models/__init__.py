"""inspectkit.models"""
