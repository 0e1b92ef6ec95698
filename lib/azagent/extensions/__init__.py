"""The extension handler: runs the VM extensions the platform asks for (issue 11).

In progress. What exists is the document layer, pure functions on bytes and
frozen dataclasses that neither touch the network nor run a process:

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
  under a handler directory and the environment of each command.

Planned on top of them: the package download and safe unpacking, the
executor that runs each command as a transient systemd unit in
``azure-vmextensions.slice``, the state kept across restarts, and the service
loop behind ``stages/extensions`` (goal-state polling, status upload).
"""
