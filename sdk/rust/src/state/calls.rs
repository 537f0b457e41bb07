//! Sending the unary calls, and what their answers become.

use super::{Create, Delete, Get, GetMany, Increment, Put, PutMany, Scan, SetAdd, SetRemove};
use crate::client::unary_call;
use crate::error::Error;
use crate::pb;
use crate::types::{Entry, Page, ReadResult, WriteResult, duration_from_proto, read_level};

unary_call!(Get, get, ReadResult, |response| read_result(response));

/// A Get's answer (also one item of a GetMany's).
fn read_result(response: pb::GetResponse) -> Result<ReadResult, Error> {
    let entry = response.entry.ok_or_else(|| Error::Internal {
        message: "Get answered without an entry".into(),
    })?;
    Ok(ReadResult {
        entry: Entry::from_proto(entry),
        served: read_level(response.served),
        staleness_bound: duration_from_proto(response.staleness_bound),
    })
}

unary_call!(
    GetMany,
    get_many,
    Vec<Result<ReadResult, Error>>,
    |response| {
        Ok(response
            .results
            .into_iter()
            .map(|r| match r.result {
                Some(pb::get_many_result::Result::Response(g)) => read_result(g),
                Some(pb::get_many_result::Result::Error(e)) => Err(Error::from_item(e)),
                None => Err(Error::Internal {
                    message: "GetMany answered an item without a result".into(),
                }),
            })
            .collect())
    }
);

unary_call!(
    PutMany,
    put_many,
    Vec<Result<WriteResult, Error>>,
    |response| {
        Ok(response
            .results
            .into_iter()
            .map(|r| match r.result {
                Some(pb::put_many_result::Result::Written(w)) => Ok(w.into()),
                Some(pb::put_many_result::Result::Error(e)) => Err(Error::from_item(e)),
                None => Err(Error::Internal {
                    message: "PutMany answered an item without a result".into(),
                }),
            })
            .collect())
    }
);

unary_call!(Put, put, WriteResult, |response| Ok(response.into()));
unary_call!(Create, create, WriteResult, |response| Ok(response.into()));
unary_call!(Delete, delete, WriteResult, |response| Ok(response.into()));
unary_call!(Increment, increment, WriteResult, |response| Ok(
    response.into()
));
unary_call!(SetAdd, set_add, WriteResult, |response| Ok(response.into()));
unary_call!(SetRemove, set_remove, WriteResult, |response| Ok(
    response.into()
));
unary_call!(Scan, scan, Page, |response| Ok(Page {
    entries: response
        .entries
        .into_iter()
        .map(Entry::from_proto)
        .collect(),
    next_page_token: Some(response.next_page_token).filter(|t| !t.is_empty()),
    served: read_level(response.served),
    staleness_bound: duration_from_proto(response.staleness_bound),
}));
