"""An example inventory for two NAS boxes: copy it to inventory/<yours>.py and edit.

Both serve the model; the first also runs the gateway that clients call.
"""

inference = [
    ("nas-living-room", {"ssh_hostname": "192.168.1.100", "ssh_user": "admin", "_sudo": True}),
    ("nas-office", {"ssh_hostname": "192.168.1.101", "ssh_user": "admin", "_sudo": True}),
]
gateway = inference[:1]
