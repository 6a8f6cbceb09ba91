//! OpenLDAP's command-line clients against Portcullis over StartTLS and LDAPS.
