"""Pure render functions: stack settings -> the text or values a running component consumes.

The Pulumi components put their output into ConfigMaps/args; the local stack writes the same text to disk.
"""
