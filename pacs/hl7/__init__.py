"""The HL7 v2 door of the scheduled workflow (IHE Radiology SWF): messages and their ACKs
(:mod:`pacs.hl7.messages`), the service calls behind them (:mod:`pacs.hl7.handler`) and the MLLP
listener ``pacs serve`` starts when ``[hl7] port`` is set (:mod:`pacs.hl7.mllp`)."""
