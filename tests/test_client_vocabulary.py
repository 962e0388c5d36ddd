"""The client stands alone (it imports nothing of the service), so it spells the API's
values itself: these tests hold its spelling to the vocabulary's."""

from __future__ import annotations

import retroiva_client.errors as client_errors
from retroiva_client.jobs import TERMINAL_STATUSES
from serve_app import errors as service_errors
from vocabulary import ApiErrorType, JobStatus


def test_the_clients_terminal_statuses_are_the_vocabularys():
    assert {JobStatus(s) for s in TERMINAL_STATUSES} == {s for s in JobStatus if s.is_terminal}


def test_every_client_error_type_is_an_api_error_type_with_the_services_status():
    by_type = {
        cls.type: cls.status
        for cls in vars(service_errors).values()
        if isinstance(cls, type) and issubclass(cls, service_errors.ApiError)
    }
    client_classes = [
        cls
        for cls in vars(client_errors).values()
        if isinstance(cls, type) and issubclass(cls, client_errors.APIError)
    ]
    assert len(client_classes) >= 10
    for cls in client_classes:
        assert ApiErrorType(cls.type) in by_type, cls
    assert {ApiErrorType(cls.type) for cls in client_classes} == set(ApiErrorType)
