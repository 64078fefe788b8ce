use thiserror::Error;

/// Why the media core refused something. Messages are safe to show to the guest concerned.
#[derive(Debug, Error)]
pub enum MediaError {
    #[error("the session description could not be parsed")]
    SdpParse,
    #[error("the offer could not be accepted: {0}")]
    OfferRefused(String),
    #[error("the answer does not match the server's offer")]
    AnswerRefused,
    #[error("the media server is at capacity")]
    Capacity,
    #[error("no DTLS certificate could be generated")]
    Certificate,
}
