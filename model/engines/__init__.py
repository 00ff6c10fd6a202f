"""CPU engines: zxing-cpp barcodes (``barcode``) and RapidOCR text lines (``ocr``)."""
