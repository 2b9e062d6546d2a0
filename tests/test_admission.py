"""Admission on its own (server/admission.py): the scheduler's cache rows refuse a stream
past capacity too, which would hide an admission that let one more through; here nothing
stands behind it."""

import threading

import pytest

from server.admission import Admission
from server.auth import caller
from server.errors import ApiError


def test_streams_and_jobs_share_the_slots_and_none_goes_past_capacity():
    admission = Admission(capacity=3)
    alice, bob = caller("key-a", None), caller(None, "10.0.0.2")
    first = admission.admit_stream(alice, limit=0)
    job = admission.try_admit_job()
    second = admission.admit_stream(bob, limit=0)
    assert admission.in_use == 3 and job is not None
    assert admission.try_admit_job() is None  # a job sees the streams' slots taken
    with pytest.raises(ApiError) as full:
        admission.admit_stream(bob, limit=0)
    assert full.value.code == "server_full" and admission.in_use == 3
    admission.release(job)
    assert admission.wait_for_room(timeout=0.0)
    third = admission.admit_stream(alice, limit=0)  # the freed place goes to whoever asks
    for ticket in (first, second, third):
        admission.release(ticket)
    assert admission.in_use == 0


def test_per_caller_limits_count_each_caller_apart():
    admission = Admission(capacity=10)
    alice, bob = caller("key-a", None), caller("key-b", None)
    held = [admission.admit_stream(alice, limit=2) for _ in range(2)]
    with pytest.raises(ApiError) as limited:
        admission.admit_stream(alice, limit=2)
    assert limited.value.code == "rate_limited"
    admission.admit_stream(bob, limit=2)  # someone else is not held back by alice
    admission.release(held[0])
    admission.admit_stream(alice, limit=2)  # and alice gets hers back once she lets one go


def test_a_slot_freed_on_another_thread_wakes_a_waiting_job():
    admission = Admission(capacity=1)
    stream = admission.admit_stream(caller(None, None), limit=0)
    assert not admission.wait_for_room(timeout=0.05)
    threading.Timer(0.1, admission.release, [stream]).start()
    assert admission.wait_for_room(timeout=5.0)
