"""``interacthuman evaluate``: score generated videos (or a curation run's samples) the way the InterActHuman paper
and AnyTalker measure them, and write a report people can read.

One module per metric family; :mod:`pipeline.evaluation.run` drives them and :mod:`pipeline.evaluation.report`
writes the HTML page. docs/EVALUATION.md defines every metric (formula, frames used, backend, what the paper reports).

==================  =========================================================  ======================================
module              metrics                                                    backend
==================  =========================================================  ======================================
``lipsync``         ``lipsync``, ``binding_accuracy``                          embedded: mediapipe face mesh + silero-vad
``eyes``            ``interactivity``                                          embedded: mediapipe face mesh
``hands``           ``hkc``, ``hkv``                                           embedded: mediapipe hands
``masks``           ``mask_iou``                                               embedded: the curation masks stage
``syncnet``         ``sync_c``, ``sync_d``, ``sync_c_star``                    SyncNet (``stages.syncnet``)
``concept``         ``clip_i``, ``dino_i``, ``face_sim``                       CLIP, DINOv2, ArcFace ONNX; boxes from
                                                                               Grounding-DINO or the masks stage
``text``            ``clip_t``                                                 X-CLIP or CLIP
``quality``         ``iqa``, ``aes``                                           Q-Align (``stages.qalign``)
``fvd``             ``fvd``                                                    I3D (Kinetics-400) + Frechet distance
==================  =========================================================  ======================================

The shared per-video work (decoding, face tracks, the assignment of detected faces to the request's identities, the
face-mesh series) lives in :mod:`pipeline.evaluation.video`; requests and the input layouts in
:mod:`pipeline.evaluation.inputs`.
"""

METRICS = ("lipsync", "binding_accuracy", "sync_c", "sync_d", "sync_c_star", "hkc", "hkv", "interactivity",
           "mask_iou", "clip_i", "dino_i", "face_sim", "clip_t", "iqa", "aes", "fvd")

# True: higher is better; False: lower is better.
HIGHER_IS_BETTER = {"lipsync": True, "binding_accuracy": True, "sync_c": True, "sync_d": False, "sync_c_star": True,
                    "hkc": True, "hkv": True, "interactivity": True, "mask_iou": True, "clip_i": True,
                    "dino_i": True, "face_sim": True, "clip_t": True, "iqa": True, "aes": True, "fvd": False}
