"""The scheduled workflow: HIS orders, the Modality Worklist, and links to MPPS, images, reports."""

from pacs.services.orders.service import Orders

__all__ = ["Orders"]
