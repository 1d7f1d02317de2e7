"""datafast-ingest: every payment into DataFast's revenue attribution, none lost.

The public API; everything else is in private-by-convention modules::

    from ingest import enqueue_payment
    receipt = enqueue_payment(amount=29.99, currency="USD", transaction_id="pi_123",
                              datafast_visitor_id=visitor_id_from_cookie)
"""

from .errors import (
    AuthenticationError,
    ConfigurationError,
    DeliveryError,
    IngestError,
    NotFoundError,
    QueueUnavailableError,
    SettingsError,
    SpoolFullError,
    UnsafeDeleteError,
    ValidationError,
)
from .models import Payment, validate_payment
from .producer import (
    AsyncProducer,
    Producer,
    Receipt,
    Rejected,
    configure,
    enqueue_payment,
    enqueue_payment_async,
    enqueue_payments,
    enqueue_payments_async,
)
from .settings import Settings

__all__ = [
    "AsyncProducer",
    "AuthenticationError",
    "ConfigurationError",
    "DeliveryError",
    "IngestError",
    "NotFoundError",
    "Payment",
    "Producer",
    "QueueUnavailableError",
    "Receipt",
    "Rejected",
    "Settings",
    "SettingsError",
    "SpoolFullError",
    "UnsafeDeleteError",
    "ValidationError",
    "configure",
    "enqueue_payment",
    "enqueue_payment_async",
    "enqueue_payments",
    "enqueue_payments_async",
    "validate_payment",
]
