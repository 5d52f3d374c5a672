"""One thread inside a labelled torch.distributed call while another, which made a labelled call
before, issues plain collectives: those are recorded, unlabelled, and recording goes on.

    python label_threads.py OUT_JSON    (COMMTRACE_DIR unset; records into TRACES)
"""

import json
import os
import sys
import threading

import torch
import torch.distributed as dist

import recorder
from recorder import capture, install

with recorder.recording(os.environ["TRACES"], clock_sync=False, sample_hz=0):
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    objects = ["a"]
    dist.broadcast_object_list(objects, src=0)  # a labelled call on this thread, ended
    inside, release = threading.Event(), threading.Event()

    def labelled() -> None:  # as a thread blocked inside a labelled call (an object collective, a recv)
        with install._label(capture.APIS.code("recv")):
            inside.set()
            release.wait(30)

    thread = threading.Thread(target=labelled)
    thread.start()
    inside.wait(30)
    total = torch.zeros(4)
    for _ in range(5):
        dist.all_reduce(total)
    still_recording = recorder.is_enabled()
    release.set()
    thread.join()
    dist.destroy_process_group()
with open(sys.argv[1], "w") as fh:
    json.dump({"still_recording": still_recording}, fh)
