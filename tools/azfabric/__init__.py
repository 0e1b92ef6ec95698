"""The Azure fabric emulator: WireServer, HostGAPlugin, IMDS and blob store on loopback.

Used by azagent's tests and VM harness, and by image builders who want to
try an image before uploading it. It reuses azagent's pure protocol modules
(one definition of each document); azagent never imports it.
"""
