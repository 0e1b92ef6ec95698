"""The extension handler: runs the VM extensions the platform asks for.

The document layer, pure functions on bytes and frozen dataclasses (protocol
floor):

* ``naming``: the goal-state values that become file, directory and unit
  names (handler and extension names, versions, sequence numbers,
  thumbprints, URLs) and the rules that keep them harmless;
* ``goalstate``: ExtensionsConfig (WireServer) and vmSettings (HostGAPlugin)
  parsed into one model, which of the two to act on, the order handlers run in;
* ``manifest``: the plugin version manifest and the version pick rule;
* ``handler``: HandlerManifest.json (commands, flags, resource limits);
* ``status``: extension status and heartbeat files read, the aggregate status
  blob built, with the direct and HostGAPlugin upload requests;
* ``environment``: HandlerEnvironment.json, settings files, the file names
  under a handler directory and the environment of each command;
* ``executor``: the contract between the loop and what runs a command;
* ``ordering``: when a higher dependencyLevel may run (the lower levels'
  terminal status, a 90-minute bound, what waits meanwhile).

On top of it (system floor): ``package`` (manifest and package download,
safe all-or-nothing unpacking), ``direct_executor`` and ``systemd_executor``
(each command a child process, or a transient unit in
``azure-vmextensions.slice``), ``state`` (what is remembered across
restarts), ``channel`` (goal state, vmSettings, certificates, status upload),
``reporting`` (each handler's status from its status file and heartbeat),
``events`` (the extensions' telemetry event folders kept bounded),
``service`` (one pass) and ``daemon`` (the loop behind ``stages/extensions``,
with sd_notify).
"""
