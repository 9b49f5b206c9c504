//! Newest-first lists, fetched one row past the page to know whether another follows.

/// One page of a newest-first list fetched with `limit + 1` rows: the first `limit`
/// rows as views, and the cursor of the next page (the last item's id) when the extra
/// row showed there is one.
pub fn paginate<R, V>(
    rows: &[R],
    limit: u32,
    view: impl Fn(&R) -> V,
    id: impl Fn(&V) -> &str,
) -> (Vec<V>, Option<String>) {
    let items: Vec<V> = rows.iter().take(limit as usize).map(view).collect();
    let next_cursor = if rows.len() > limit as usize {
        items.last().map(|item| id(item).to_owned())
    } else {
        None
    };
    (items, next_cursor)
}
